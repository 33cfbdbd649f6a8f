package cli

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
)

// TestLoginLoopback: with a browser on this machine, login listens on
// 127.0.0.1 under a random path, the browser comes back there with a
// code, and the CLI redeems it with its verifier.
func TestLoginLoopback(t *testing.T) {
	e := newTestEnv(t)
	oldHas, oldOpen := hasBrowser, openBrowser
	t.Cleanup(func() { hasBrowser, openBrowser = oldHas, oldOpen })
	hasBrowser = func() bool { return true }
	pages := make(chan string, 2)
	openBrowser = func(string) error {
		// Play the coordinator's redirect, as the browser follows it.
		e.coord.mu.Lock()
		redirect := e.coord.loginStart.RedirectURI
		e.coord.mu.Unlock()
		go func() {
			for _, code := range []string{"good", "good"} {
				resp, err := http.Get(redirect + "?" + url.Values{"code": {code}}.Encode())
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
	code, out, errb := e.run("login", e.coord.srv.URL, "--ca-file", e.coord.caFile)
	if code != 0 || !strings.Contains(out, "Logged in to "+e.coord.srv.URL+" as alice@example.com") {
		t.Fatalf("login: exit %d\n%s\n%s", code, out, errb)
	}
	if !strings.Contains(errb, "Opened your browser") || strings.Contains(errb, "BCDF-GHJK") {
		t.Errorf("stderr:\n%s", errb)
	}
	u, err := url.Parse(e.coord.loginStart.RedirectURI)
	if err != nil || u.Scheme != "http" || u.Hostname() != "127.0.0.1" || !strings.HasPrefix(u.Path, "/clustral/callback/") || len(u.Path) < len("/clustral/callback/")+20 {
		t.Errorf("redirect_uri %q is not a loopback URL with a random path", e.coord.loginStart.RedirectURI)
	}
	if p := <-pages; !strings.Contains(p, "Signed in as alice@example.com") {
		t.Errorf("browser page: %s", p)
	}
	if s, err := loadSession(e.dir); err != nil || s.Session.Token != "tok-new-1" {
		t.Errorf("stored session %+v, %v", s, err)
	}
	<-pages // the second visit found the listener finished or closed
}

// TestLoginHeadless: --no-browser prints the URL, this device's name and
// the code to confirm, and polls with the verifier.
func TestLoginHeadless(t *testing.T) {
	e := newTestEnv(t)
	code, out, errb := e.run("login", e.coord.srv.URL, "--ca-file", e.coord.caFile, "--no-browser")
	if code != 0 || !strings.Contains(out, "as alice@example.com") {
		t.Fatalf("login: exit %d\n%s\n%s", code, out, errb)
	}
	host, _ := os.Hostname()
	for _, want := range []string{e.coord.srv.URL + "/idp/auth", "names this device (" + host + ")", "  BCDF-GHJK\n"} {
		if !strings.Contains(errb, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb)
		}
	}
	if e.coord.loginStart.RedirectURI != "" || e.coord.loginStart.Device.Hostname != host {
		t.Errorf("login/start = %+v", e.coord.loginStart)
	}
}

// TestLoginLoopbackError: a login the coordinator refused comes back to
// the listener as an error, which the CLI reports at once (exit 3) and
// shows in the browser.
func TestLoginLoopbackError(t *testing.T) {
	e := newTestEnv(t)
	oldHas, oldOpen := hasBrowser, openBrowser
	t.Cleanup(func() { hasBrowser, openBrowser = oldHas, oldOpen })
	hasBrowser = func() bool { return true }
	page := make(chan string, 1)
	openBrowser = func(string) error {
		e.coord.mu.Lock()
		redirect := e.coord.loginStart.RedirectURI
		e.coord.mu.Unlock()
		go func() {
			resp, err := http.Get(redirect + "?" + url.Values{"error": {"login_failed"}, "error_description": {"user bob@example.com is disabled; ask an administrator"}}.Encode())
			if err != nil {
				page <- err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			page <- string(b)
		}()
		return nil
	}
	code, _, errb := e.run("login", e.coord.srv.URL, "--ca-file", e.coord.caFile)
	if code != exitAuth || !strings.Contains(errb, "error: login failed: user bob@example.com is disabled") || !strings.Contains(errb, "hint: run clustral login again") {
		t.Fatalf("login: exit %d\n%s", code, errb)
	}
	if p := <-page; !strings.Contains(p, "Login failed") {
		t.Errorf("browser page: %s", p)
	}
	if s, _ := loadSession(e.dir); s != nil {
		t.Errorf("a session was stored: %+v", s)
	}
}
