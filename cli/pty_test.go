package cli

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
)

// terminal is a pseudo-terminal for stdin and stderr of an in-process
// run, with what the program wrote to it.
type terminal struct {
	tty  *os.File
	ptmx *os.File
	mu   sync.Mutex
	out  bytes.Buffer
	seen chan struct{} // signalled on every read
}

func newTerminal(t *testing.T) *terminal {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	term := &terminal{tty: tty, ptmx: ptmx, seen: make(chan struct{}, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			term.mu.Lock()
			term.out.Write(buf[:n])
			term.mu.Unlock()
			select {
			case term.seen <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { tty.Close(); ptmx.Close(); <-done })
	return term
}

func (term *terminal) output() string {
	term.mu.Lock()
	defer term.mu.Unlock()
	return term.out.String()
}

// answer waits until the terminal shows prompt, then types line.
func (term *terminal) answer(t *testing.T, prompt, line string) {
	t.Helper()
	if term.waitMatch(t, regexp.MustCompile(regexp.QuoteMeta(prompt))) != nil {
		io.WriteString(term.ptmx, line+"\n")
	}
}

// waitMatch waits until the terminal shows text matching re and returns
// the submatches, or nil (after failing the test) if it does not soon.
func (term *terminal) waitMatch(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if m := re.FindStringSubmatch(term.output()); m != nil {
			return m
		}
		select {
		case <-term.seen:
		case <-deadline:
			t.Errorf("nothing matches %s; terminal shows:\n%s", re, term.output())
			return nil
		}
	}
}

// runOnTerminal runs the CLI with stdin and stderr on term and stdout in
// a buffer, while answer plays the user.
func runOnTerminal(t *testing.T, term *terminal, answer func(), args ...string) (int, string) {
	t.Helper()
	var stdout bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(context.Background(), args, term.tty, &stdout, term.tty) }()
	answer()
	select {
	case code := <-done:
		return code, stdout.String()
	case <-time.After(20 * time.Second):
		t.Fatalf("clustral %v did not finish; terminal shows:\n%s", args, term.output())
		return 0, ""
	}
}

// TestReloginOnTerminal: an expired session on a terminal offers to log
// in again; yes runs the login flow and then the command.
func TestReloginOnTerminal(t *testing.T) {
	e := newRealEnv(t, nil)
	e.login("alice@example.com", fixedNow.Add(-time.Minute))
	e.real.SignInNext("alice@example.com")
	term := newTerminal(t)
	code, out := runOnTerminal(t, term, func() {
		term.answer(t, "Log in again now? [y/N]", "y")
		m := term.waitMatch(t, loginPromptRE)
		if m == nil {
			return
		}
		if _, err := e.real.ConfirmLogin(m[1], m[2]); err != nil {
			t.Error(err)
		}
	}, "whoami")
	if code != 0 {
		t.Fatalf("exit %d; terminal:\n%s", code, term.output())
	}
	if !strings.Contains(out, "alice@example.com on "+e.coordURL) {
		t.Errorf("whoami after login printed %q", out)
	}
	shown := term.output()
	for _, want := range []string{"session for " + e.coordURL + " expired", e.coordURL + "/idp/authorize", "\033[31merror: "} {
		if !strings.Contains(shown, want) {
			t.Errorf("terminal does not show %q:\n%s", want, shown)
		}
	}
	if s, err := loadSession(e.dir); err != nil || !s.Session.ExpiresAt.After(fixedNow) {
		t.Errorf("session after login: %+v, %v", s, err)
	}

	// Declining keeps exit code 3 and the hint.
	e.login("alice@example.com", fixedNow.Add(-time.Minute))
	term2 := newTerminal(t)
	code, _ = runOnTerminal(t, term2, func() { term2.answer(t, "[y/N]", "n") }, "whoami")
	term2.waitFor(t, "hint: run: clustral login")
	if code != exitAuth {
		t.Errorf("declined: exit %d, terminal:\n%s", code, term2.output())
	}
}

// TestReloginNotInteractive: without a terminal, an expired session fails
// at once with exit code 3, one error line and one hint line.
func TestReloginNotInteractive(t *testing.T) {
	e := newRealEnv(t, nil)
	e.login("alice@example.com", fixedNow.Add(-time.Minute))
	for _, args := range [][]string{{"whoami"}, {"kube", "ls"}} {
		code, _, errb := e.run(args...)
		lines := strings.Split(strings.TrimSpace(errb), "\n")
		if code != exitAuth || len(lines) != 2 || !strings.HasPrefix(lines[0], "error: your session for ") || lines[1] != "hint: run: clustral login "+e.coordURL {
			t.Errorf("%v: exit %d, stderr:\n%s", args, code, errb)
		}
	}
}

// TestConfigCleanConfirm: config clean asks on a terminal; no keeps the
// files, yes removes them; without a terminal it needs --yes.
func TestConfigCleanConfirm(t *testing.T) {
	e := newRealEnv(t, nil)
	e.login("alice@example.com", fixedNow.Add(time.Hour))

	code, _, errb := e.run("config", "clean")
	if code != exitUsage || !strings.Contains(errb, "no terminal to ask on") || !strings.Contains(errb, "hint: pass --yes") {
		t.Errorf("no terminal: exit %d, stderr %s", code, errb)
	}
	code, out, _ := e.run("config", "clean", "--dry-run")
	if code != 0 || !strings.Contains(out, "Would:\n  delete "+e.dir) {
		t.Errorf("dry run: exit %d, out %s", code, out)
	}

	term := newTerminal(t)
	code, out = runOnTerminal(t, term, func() { term.answer(t, "Continue? [y/N]", "n") }, "config", "clean")
	if code != 0 || !strings.Contains(out, "Nothing changed") {
		t.Errorf("declined: exit %d, out %q", code, out)
	}
	if _, err := os.Stat(filepath.Join(e.dir, sessionFile)); err != nil {
		t.Fatalf("declined but session gone: %v", err)
	}

	term2 := newTerminal(t)
	code, out = runOnTerminal(t, term2, func() { term2.answer(t, "Continue? [y/N]", "y") }, "config", "clean")
	if code != 0 || !strings.Contains(out, "Cleaned: delete "+e.dir) {
		t.Errorf("confirmed: exit %d, out %q, terminal %s", code, out, term2.output())
	}
	if _, err := os.Stat(e.dir); !os.IsNotExist(err) {
		t.Errorf("profile directory still there: %v", err)
	}
}

// TestColourOnlyOnTerminal: errors are red on a terminal, plain when not,
// and plain on a terminal with NO_COLOR or --no-color.
func TestColourOnlyOnTerminal(t *testing.T) {
	e := newBareEnv(t)
	code, _, errb := e.run("whoami")
	if code != exitAuth || strings.Contains(errb, "\033[") || !strings.HasPrefix(errb, "error: not logged in\nhint: ") {
		t.Errorf("not a terminal: exit %d, stderr %q", code, errb)
	}
	tests := []struct {
		name   string
		env    string
		args   []string
		colour bool
	}{
		{"terminal", "", []string{"whoami"}, true},
		{"NO_COLOR", "1", []string{"whoami"}, false},
		{"--no-color", "", []string{"whoami", "--no-color"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NO_COLOR", tt.env)
			term := newTerminal(t)
			runOnTerminal(t, term, func() {}, tt.args...)
			term.waitFor(t, "hint:")
			if got := strings.Contains(term.output(), "\033["); got != tt.colour {
				t.Errorf("colour = %v, want %v: %q", got, tt.colour, term.output())
			}
		})
	}
}

// waitFor waits until the terminal shows s, and stops the test if it
// does not soon.
func (term *terminal) waitFor(t *testing.T, s string) {
	t.Helper()
	if term.waitMatch(t, regexp.MustCompile(regexp.QuoteMeta(s))) == nil {
		t.FailNow()
	}
}
