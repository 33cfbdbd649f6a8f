package harness

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// uiLink is the line `clustral ui` prints with its page's link.
var uiLink = regexp.MustCompile(`Live view: (http://127\.0\.0\.1:\d+/\S*)`)

// StartUI runs `clustral ui --no-browser args...` as u for t (u's
// clustral up must run) and returns the link it prints, with its
// one-time token. t's cleanup stops it and logs its tail if t failed.
func (u *TestUser) StartUI(t testing.TB, args ...string) string {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "ui.log")
	p, err := StartProcess("clustral ui", u.Bin, append([]string{"ui", "--no-browser", "--debug"}, args...), u.Environ(), logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.StopAtEnd(t, 40)
	var link string
	err = Eventually(context.Background(), 30*time.Second, func(context.Context) error {
		if p.Exited() {
			return errors.New("clustral ui exited: " + p.Tail(20))
		}
		b, err := os.ReadFile(logPath)
		if err != nil {
			return err
		}
		m := uiLink.FindSubmatch(b)
		if m == nil {
			return errors.New("clustral ui printed no link yet")
		}
		link = string(m[1])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return link
}
