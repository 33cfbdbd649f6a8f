package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/clustral/clustral/proto"
)

// TestLoginLoopback: with a browser on this machine, login listens on
// 127.0.0.1 under a random path, the browser signs in at the identity
// provider and the coordinator sends it back there with a code, and the
// CLI redeems it with its verifier.
func TestLoginLoopback(t *testing.T) {
	e := newRealEnv(t, nil)
	e.real.SignInNext("alice@example.com")
	// The browser follows the redirects: to the identity provider, the
	// coordinator's callback and the CLI's listener; then it comes back
	// to the listener once more.
	pages := useBrowser(t, e, func(authURL string) []string {
		return []string{authURL, loginRedirect(t, e) + "?" + url.Values{"code": {"again"}}.Encode()}
	})
	code, out, errb := e.run("login", e.coordURL, "--ca-file", e.caFile)
	if code != 0 || !strings.Contains(out, "Logged in to "+e.coordURL+" as alice@example.com") {
		t.Fatalf("login: exit %d\n%s\n%s", code, out, errb)
	}
	if !strings.Contains(errb, "Opened your browser") {
		t.Errorf("stderr:\n%s", errb)
	}
	if p := <-pages; !strings.Contains(p, "Signed in as alice@example.com") {
		t.Errorf("browser page: %s", p)
	}
	s, err := loadSession(e.dir)
	if err != nil || s.Session.User.Login != "alice@example.com" {
		t.Fatalf("stored session %+v, %v", s, err)
	}
	var who proto.Whoami
	e.real.Do(s.Session.Token, http.MethodGet, proto.APIVersion+"/whoami", nil, &who)
	<-pages // the second visit found the listener finished or closed
}

// useBrowser stands in for the user's browser until t ends: when the CLI
// opens it on an authorization URL, it visits the URLs visit returns for
// it, one after the other (following redirects, trusting e's
// coordinator), and sends the page each ends on, or the error, on the
// returned channel.
func useBrowser(t *testing.T, e *testEnv, visit func(authURL string) []string) <-chan string {
	oldHas, oldOpen := hasBrowser, openBrowser
	t.Cleanup(func() { hasBrowser, openBrowser = oldHas, oldOpen })
	hasBrowser = func() bool { return true }
	pages := make(chan string, 2)
	openBrowser = func(authURL string) error {
		urls := visit(authURL)
		go func() {
			for _, u := range urls {
				resp, err := e.real.Client().Get(u)
				if err != nil {
					pages <- err.Error()
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				pages <- string(b)
			}
		}()
		return nil
	}
	return pages
}

// loginRedirect returns the redirect_uri of the login/start the
// coordinator of e received last, after checking that it is a loopback
// URL with a random path.
func loginRedirect(t *testing.T, e *testEnv) string {
	t.Helper()
	var start proto.LoginStartRequest
	for _, r := range e.real.Requests() {
		if body, ok := strings.CutPrefix(r, "POST "+proto.APIVersion+"/login/start "); ok {
			if err := json.Unmarshal([]byte(body), &start); err != nil {
				t.Fatal(err)
			}
		}
	}
	u, err := url.Parse(start.RedirectURI)
	if err != nil || u.Scheme != "http" || u.Hostname() != "127.0.0.1" || !strings.HasPrefix(u.Path, "/clustral/callback/") || len(u.Path) < len("/clustral/callback/")+20 {
		t.Errorf("redirect_uri %q is not a loopback URL with a random path", start.RedirectURI)
	}
	return start.RedirectURI
}

// TestLoginHeadless: --no-browser prints the URL, this device's name and
// the code to confirm, and polls with the verifier until the login is
// confirmed in a browser.
func TestLoginHeadless(t *testing.T) {
	e := newRealEnv(t, nil)
	e.real.SignInNext("alice@example.com")
	var out bytes.Buffer
	stderr := newWatchedWriter()
	confirmed := make(chan error, 1)
	go func() {
		// The user reads the URL and code, and confirms in a browser.
		m := stderr.waitMatch(loginPromptRE)
		if m == nil {
			confirmed <- errors.New("the login printed no URL and code")
			return
		}
		_, err := e.real.ConfirmLogin(m[1], m[2])
		confirmed <- err
	}()
	code := run(context.Background(), []string{"login", e.coordURL, "--ca-file", e.caFile, "--no-browser"}, strings.NewReader(""), &out, stderr)
	stderr.Close()
	errb := stderr.String()
	if err := <-confirmed; err != nil {
		t.Error(err)
	}
	if code != 0 || !strings.Contains(out.String(), "as alice@example.com") {
		t.Fatalf("login: exit %d\n%s\n%s", code, out.String(), errb)
	}
	host, _ := os.Hostname()
	for _, want := range []string{e.coordURL + "/idp/authorize", "names this device (" + host + ")"} {
		if !strings.Contains(errb, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb)
		}
	}
	var start proto.LoginStartRequest
	for _, r := range e.real.Requests() {
		if body, ok := strings.CutPrefix(r, "POST "+proto.APIVersion+"/login/start "); ok {
			json.Unmarshal([]byte(body), &start)
		}
	}
	if start.RedirectURI != "" || start.Device.Hostname != host {
		t.Errorf("login/start = %+v", start)
	}
}

// loginPromptRE finds, in what a headless login prints, the URL to open
// and the code to confirm there.
var loginPromptRE = regexp.MustCompile(`(?s)(https://\S+/idp/authorize\S*).*\n  ([A-Z]{4}-[A-Z]{4})\r?\n`)

// watchedWriter is an io.Writer whose text so far a goroutine can wait
// on.
type watchedWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	wrote  chan struct{} // signalled on every write
	closed chan struct{} // closed by Close
}

func newWatchedWriter() *watchedWriter {
	return &watchedWriter{wrote: make(chan struct{}, 1), closed: make(chan struct{})}
}

// Close ends the writing: waitMatch no longer waits.
func (w *watchedWriter) Close() { close(w.closed) }

func (w *watchedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	select {
	case w.wrote <- struct{}{}:
	default:
	}
	return w.buf.Write(p)
}

func (w *watchedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitMatch waits until the text written matches re and returns the
// submatches, or nil once w is closed without a match.
func (w *watchedWriter) waitMatch(re *regexp.Regexp) []string {
	for {
		if m := re.FindStringSubmatch(w.String()); m != nil {
			return m
		}
		select {
		case <-w.wrote:
		case <-w.closed:
			return re.FindStringSubmatch(w.String())
		}
	}
}

// TestLoginLoopbackError: a login the identity provider refused comes
// back from the coordinator to the listener as an error, which the CLI
// reports at once (exit 3) and shows in the browser.
func TestLoginLoopbackError(t *testing.T) {
	e := newRealEnv(t, nil)
	e.real.RefuseNext("the user cancelled")
	page := useBrowser(t, e, func(authURL string) []string {
		loginRedirect(t, e)
		return []string{authURL}
	})
	code, _, errb := e.run("login", e.coordURL, "--ca-file", e.caFile)
	if code != exitAuth || !strings.Contains(errb, "error: login failed: the identity provider refused the login: access_denied: the user cancelled") ||
		!strings.Contains(errb, "hint: run clustral login again") {
		t.Fatalf("login: exit %d\n%s", code, errb)
	}
	if p := <-page; !strings.Contains(p, "Login failed") {
		t.Errorf("browser page: %s", p)
	}
	if s, _ := loadSession(e.dir); s != nil {
		t.Errorf("a session was stored: %+v", s)
	}
}

// TestLoginDisabledUser: the coordinator refuses a session to a disabled
// user when the CLI redeems the browser's code; the CLI says so (exit 4)
// and stores nothing.
func TestLoginDisabledUser(t *testing.T) {
	e := newRealEnv(t, nil)
	admin := e.real.Login("admin@example.com")
	e.real.Login("bob@example.com")
	e.real.Do(admin.Token, http.MethodPost, proto.APIVersion+"/users/bob@example.com/disable", nil, nil)
	e.real.SignInNext("bob@example.com")
	page := useBrowser(t, e, func(authURL string) []string { return []string{authURL} })
	code, _, errb := e.run("login", e.coordURL, "--ca-file", e.caFile)
	<-page
	if code != exitDenied || !strings.Contains(errb, "error: user bob@example.com is disabled; ask an administrator") {
		t.Fatalf("login: exit %d\n%s", code, errb)
	}
	if s, _ := loadSession(e.dir); s != nil {
		t.Errorf("a session was stored: %+v", s)
	}
}
