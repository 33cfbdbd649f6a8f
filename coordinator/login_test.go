package coordinator

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode"

	"golang.org/x/oauth2"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// pendingStart is a login started by a test's CLI: what login/start
// answered and the verifier only that CLI knows.
type pendingStart struct {
	proto.LoginStartResponse
	verifier string
}

// startLogin starts a login as the CLI does; redirect empty is headless.
func (e *testEnv) startLogin(redirect string) pendingStart {
	e.t.Helper()
	v := oauth2.GenerateVerifier()
	var ps pendingStart
	e.must("POST", "/api/v1/login/start", "", proto.LoginStartRequest{
		CodeChallenge: oauth2.S256ChallengeFromVerifier(v), CodeChallengeMethod: proto.CodeChallengeS256,
		RedirectURI: redirect, Device: proto.LoginDevice{Hostname: "build-box", OS: "linux/amd64"},
	}, &ps.LoginStartResponse)
	ps.verifier = v
	return ps
}

// poll polls a login with a verifier.
func (e *testEnv) pollLogin(handle, verifier string) (int, *proto.Problem, proto.Session) {
	e.t.Helper()
	var sess proto.Session
	status, p := e.call("POST", "/api/v1/login/poll", "", proto.LoginPollRequest{Handle: handle, CodeVerifier: verifier}, &sess)
	return status, p, sess
}

// newBrowser is a victim's or a user's browser: it keeps cookies and
// follows redirects, except into a loopback address, where it stops and
// hands back the redirect.
func newBrowser(t *testing.T) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if strings.HasPrefix(req.URL.String(), "http://127.0.0.1:1/") || strings.HasPrefix(req.URL.String(), "http://[::1]:1/") {
			return http.ErrUseLastResponse
		}
		return nil
	}}
}

// TestLoginAttackerWithHandleGetsNothing is the phishing attack: an
// attacker starts a login, a victim whose IdP signs them in silently opens
// the URL, and the attacker polls. Whatever the flow, the attacker's poll
// (with the attacker's own, correct verifier) never yields the victim's
// session.
func TestLoginAttackerWithHandleGetsNothing(t *testing.T) {
	for _, redirect := range []string{"", "http://127.0.0.1:1/cb"} {
		t.Run("redirect="+redirect, func(t *testing.T) {
			e := newTestEnv(t)
			attacker := e.startLogin(redirect)
			e.iss.signIn("admin@example.com")
			resp, err := newBrowser(t).Get(attacker.AuthURL)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			for range 3 {
				status, p, sess := e.pollLogin(attacker.Handle, attacker.verifier)
				if status == http.StatusOK || sess.Token != "" {
					t.Fatalf("attacker's poll returned the victim's session %+v", sess)
				}
				if status != http.StatusAccepted || p.Code != proto.CodeLoginPending {
					t.Fatalf("attacker's poll = %d %+v, want 202 LOGIN_PENDING", status, p)
				}
			}
		})
	}
}

// visit opens u in browser b and returns the status, the body and, for a
// redirect b stopped at, its target.
func visit(t *testing.T, b *http.Client, u string) (int, string, *url.URL) {
	t.Helper()
	resp, err := b.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	loc, _ := resp.Location()
	return resp.StatusCode, string(body), loc
}

// confirmForm posts the confirmation form from browser b with the csrf
// token of page.
func (e *testEnv) confirmForm(b *http.Client, page, code, action string, hdr map[string]string) (int, string) {
	e.t.Helper()
	csrf := between(page, `name="csrf" value="`, `"`)
	req, _ := http.NewRequest("POST", e.ts.URL+"/oidc/confirm", strings.NewReader(url.Values{"csrf": {csrf}, "user_code": {code}, "action": {action}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", e.ts.URL)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := b.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func between(s, from, to string) string {
	i := strings.Index(s, from)
	if i < 0 {
		return ""
	}
	s = s[i+len(from):]
	if j := strings.Index(s, to); j >= 0 {
		return s[:j]
	}
	return ""
}

// waitAudit waits for an audit event with code and returns it.
func (e *testEnv) waitAudit(code proto.AuditCode) proto.AuditEvent {
	e.t.Helper()
	admin := e.login("admin@example.com")
	var found proto.AuditEvent
	testkit.WaitFor(e.t, "an audit event "+string(code), func() bool {
		var page proto.AuditPage
		e.must("GET", "/api/v1/audit/events?code="+string(code), admin.Token, nil, &page)
		if len(page.Events) > 0 {
			found = page.Events[0]
			return true
		}
		return false
	})
	return found
}

// TestLoginLoopback: the default flow. The browser comes back to the CLI's
// loopback address with a one-time code, which only the verifier redeems.
func TestLoginLoopback(t *testing.T) {
	e := newTestEnv(t)
	cli := e.startLogin("http://127.0.0.1:1/cb/x")
	if cli.UserCode != "" {
		t.Errorf("a loopback login has a user code %q", cli.UserCode)
	}
	e.iss.signIn("alice@example.com", "dev")
	status, _, loc := visit(t, newBrowser(t), cli.AuthURL)
	if status != http.StatusSeeOther || loc == nil || loc.Host != "127.0.0.1:1" || loc.Path != "/cb/x" || loc.Query().Get("code") == "" {
		t.Fatalf("callback answered %d to %v, want 303 to the loopback URI with a code", status, loc)
	}
	code := loc.Query().Get("code")
	if status, p, _ := e.pollLogin(cli.Handle, cli.verifier); status != http.StatusAccepted || p.Code != proto.CodeLoginPending {
		t.Fatalf("poll of a loopback login = %d %+v, want 202: the poll never yields its session", status, p)
	}
	var sess proto.Session
	e.must("POST", "/api/v1/login/exchange", "", proto.LoginExchangeRequest{Code: code, CodeVerifier: cli.verifier}, &sess)
	if sess.User.Login != "alice@example.com" || sess.Token == "" {
		t.Fatalf("session = %+v", sess)
	}
	var who proto.Whoami
	e.must("GET", "/api/v1/whoami", sess.Token, nil, &who)
	if who.User.Login != "alice@example.com" {
		t.Fatalf("whoami = %+v", who)
	}
	// The code is one-time, and the login is gone.
	if status, p := e.call("POST", "/api/v1/login/exchange", "", proto.LoginExchangeRequest{Code: code, CodeVerifier: cli.verifier}, nil); status != http.StatusGone || p.Code != proto.CodeLoginConsumed {
		t.Fatalf("replayed code = %d %+v, want 410", status, p)
	}
	if status, _, _ := e.pollLogin(cli.Handle, cli.verifier); status != http.StatusGone {
		t.Fatalf("poll after the exchange = %d, want 410", status)
	}
	// Replaying the callback gets nothing either.
	if status, _, _ := visit(t, newBrowser(t), cli.AuthURL); status != http.StatusUnauthorized {
		t.Fatalf("replayed callback = %d, want 401", status)
	}
}

// TestLoginCodeNeedsVerifier: a loopback code that reaches someone else
// (another local process, a pasted URL) is worthless without the verifier,
// and one wrong try ends the login.
func TestLoginCodeNeedsVerifier(t *testing.T) {
	e := newTestEnv(t)
	cli := e.startLogin("http://[::1]:1/cb")
	e.iss.signIn("alice@example.com")
	_, _, loc := visit(t, newBrowser(t), cli.AuthURL)
	if loc == nil || loc.Query().Get("code") == "" {
		t.Fatalf("no redirect with a code: %v", loc)
	}
	code := loc.Query().Get("code")
	other := oauth2.GenerateVerifier()
	if status, p := e.call("POST", "/api/v1/login/exchange", "", proto.LoginExchangeRequest{Code: code, CodeVerifier: other}, nil); status != http.StatusUnauthorized || p.Code != proto.CodeLoginFailed {
		t.Fatalf("exchange with another verifier = %d %+v, want 401 LOGIN_FAILED", status, p)
	}
	if status, p := e.call("POST", "/api/v1/login/exchange", "", proto.LoginExchangeRequest{Code: code, CodeVerifier: cli.verifier}, nil); status != http.StatusGone {
		t.Fatalf("exchange after a wrong verifier = %d %+v, want 410: the code is spent", status, p)
	}
	ev := e.waitAudit(proto.AuditLoginUnbound)
	if ev.Actor != "alice@example.com" || !strings.Contains(ev.Metadata["reason"], "verifier") || ev.Metadata["hostname"] != "build-box" {
		t.Fatalf("audit event = %+v", ev)
	}
	// A poll with the wrong verifier ends a login too.
	cli = e.startLogin("")
	if status, p, _ := e.pollLogin(cli.Handle, other); status != http.StatusUnauthorized || p.Code != proto.CodeLoginFailed {
		t.Fatalf("poll with another verifier = %d %+v, want 401", status, p)
	}
	if status, _, _ := e.pollLogin(cli.Handle, cli.verifier); status != http.StatusGone {
		t.Fatalf("poll after a wrong verifier = %d, want 410", status)
	}
	// Without a verifier the poll is refused outright.
	if status, p := e.call("POST", "/api/v1/login/poll", "", proto.LoginPollRequest{Handle: cli.Handle}, nil); status != http.StatusBadRequest || !strings.Contains(p.Title, "code_verifier") {
		t.Fatalf("poll without verifier = %d %+v, want 400 naming code_verifier", status, p)
	}
}

// TestLoginStartChecks: login/start refuses what would make a login
// unbindable, with a sentence naming the fix.
func TestLoginStartChecks(t *testing.T) {
	e := newTestEnv(t)
	ch := oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())
	tests := []struct {
		name string
		req  any
		want string
	}{
		{"no body (an old CLI)", nil, "code_challenge is required"},
		{"plain method", proto.LoginStartRequest{CodeChallenge: ch, CodeChallengeMethod: "plain"}, "must be S256"},
		{"short challenge", proto.LoginStartRequest{CodeChallenge: "abc", CodeChallengeMethod: "S256"}, "43-character"},
		{"localhost", proto.LoginStartRequest{CodeChallenge: ch, CodeChallengeMethod: "S256", RedirectURI: "http://localhost:8080/cb"}, "not on 127.0.0.1"},
		{"remote host", proto.LoginStartRequest{CodeChallenge: ch, CodeChallengeMethod: "S256", RedirectURI: "http://evil.example.com:80/cb"}, "not on 127.0.0.1"},
		{"private address", proto.LoginStartRequest{CodeChallenge: ch, CodeChallengeMethod: "S256", RedirectURI: "http://10.0.0.1:8080/cb"}, "not on 127.0.0.1"},
		{"other loopback", proto.LoginStartRequest{CodeChallenge: ch, CodeChallengeMethod: "S256", RedirectURI: "http://127.0.0.2:8080/cb"}, "not on 127.0.0.1"},
		{"https", proto.LoginStartRequest{CodeChallenge: ch, CodeChallengeMethod: "S256", RedirectURI: "https://127.0.0.1:8080/cb"}, "plain http://"},
		{"custom scheme", proto.LoginStartRequest{CodeChallenge: ch, CodeChallengeMethod: "S256", RedirectURI: "javascript:alert(1)"}, "plain http://"},
		{"user info", proto.LoginStartRequest{CodeChallenge: ch, CodeChallengeMethod: "S256", RedirectURI: "http://evil.example.com@127.0.0.1:8080/cb"}, "plain http://"},
		{"query", proto.LoginStartRequest{CodeChallenge: ch, CodeChallengeMethod: "S256", RedirectURI: "http://127.0.0.1:8080/cb?next=https://evil.example.com"}, "plain http://"},
		{"no port", proto.LoginStartRequest{CodeChallenge: ch, CodeChallengeMethod: "S256", RedirectURI: "http://127.0.0.1/cb"}, "no valid port"},
		{"port zero", proto.LoginStartRequest{CodeChallenge: ch, CodeChallengeMethod: "S256", RedirectURI: "http://127.0.0.1:0/cb"}, "no valid port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, p := e.call("POST", "/api/v1/login/start", "", tt.req, nil)
			if status != http.StatusBadRequest || !strings.Contains(p.Title, tt.want) || p.Hint == "" {
				t.Fatalf("login/start = %d %+v, want 400 with %q and a hint", status, p, tt.want)
			}
		})
	}
	for _, ok := range []string{"http://127.0.0.1:49152/callback", "http://[::1]:8080/", "http://127.0.0.1:65535"} {
		var resp proto.LoginStartResponse
		e.must("POST", "/api/v1/login/start", "", proto.LoginStartRequest{CodeChallenge: ch, CodeChallengeMethod: "S256", RedirectURI: ok}, &resp)
	}
}

// TestLoginHeadlessConfirm: without a loopback listener, the session is
// issued only after the person typed the terminal's code into the page that
// names the device, in the browser that signed in.
func TestLoginHeadlessConfirm(t *testing.T) {
	e := newTestEnv(t)
	cli := e.startLogin("")
	if len(cli.UserCode) != 9 || cli.UserCode[4] != '-' {
		t.Fatalf("user code %q, want XXXX-XXXX", cli.UserCode)
	}
	e.iss.signIn("alice@example.com")
	b := newBrowser(t)
	status, page, _ := visit(t, b, cli.AuthURL)
	for _, want := range []string{"Confirm this login", "alice@example.com", "build-box", "linux/amd64", "127.0.0.1", time.Now().UTC().Format("2006-01-02"), `name="user_code"`} {
		if status != http.StatusOK || !strings.Contains(page, want) {
			t.Fatalf("confirmation page (%d) lacks %q:\n%s", status, want, page)
		}
	}
	if strings.Contains(page, cli.UserCode) {
		t.Fatal("the confirmation page shows the code it asks for")
	}
	if status, p, _ := e.pollLogin(cli.Handle, cli.verifier); status != http.StatusAccepted || !strings.Contains(p.Detail, "confirmed in the browser") || strings.Contains(p.Detail, "alice") {
		t.Fatalf("poll before confirmation = %d %+v", status, p)
	}
	// A wrong code shows the form again.
	if status, body := e.confirmForm(b, page, "BBBB-BBBB", "confirm", nil); status != http.StatusUnprocessableEntity || !strings.Contains(body, "4 tries left") {
		t.Fatalf("wrong code = %d %s", status, body)
	}
	if status, _, _ := e.pollLogin(cli.Handle, cli.verifier); status != http.StatusAccepted {
		t.Fatalf("poll after a wrong code = %d, want 202", status)
	}
	// Typed as people type it.
	status, body := e.confirmForm(b, page, " "+strings.ToLower(strings.ReplaceAll(cli.UserCode, "-", " "))+" ", "confirm", nil)
	if status != http.StatusOK || !strings.Contains(body, "Signed in as alice@example.com") || !strings.Contains(body, "build-box") {
		t.Fatalf("confirm = %d %s", status, body)
	}
	status, p, sess := e.pollLogin(cli.Handle, cli.verifier)
	if status != http.StatusOK || sess.User.Login != "alice@example.com" {
		t.Fatalf("poll after confirmation = %d %+v %+v", status, p, sess)
	}
	if status, _, _ := e.pollLogin(cli.Handle, cli.verifier); status != http.StatusGone {
		t.Fatalf("second poll = %d, want 410", status)
	}
	// The form does not take a second confirmation.
	if status, _ := e.confirmForm(b, page, cli.UserCode, "confirm", nil); status != http.StatusForbidden {
		t.Fatalf("second confirmation = %d, want 403", status)
	}
}

// TestLoginHeadlessRefusals: every way around the confirmation yields no
// session, and a login ended this way is audited with its own code.
func TestLoginHeadlessRefusals(t *testing.T) {
	tests := []struct {
		name string
		// act plays the browser after sign-in; it returns the status the
		// confirmation POST must get.
		act      func(e *testEnv, b *http.Client, page string, code string) (int, string)
		status   int
		pollCode proto.ErrorCode
		reason   string
	}{
		{"declined", func(e *testEnv, b *http.Client, page, code string) (int, string) {
			return e.confirmForm(b, page, "", "decline", nil)
		}, http.StatusOK, proto.CodeLoginFailed, "declined"},
		{"wrong code five times", func(e *testEnv, b *http.Client, page, code string) (int, string) {
			for range maxConfirmAttempts - 1 {
				e.confirmForm(b, page, "BBBB-BBBB", "confirm", nil)
			}
			status, body := e.confirmForm(b, page, "BBBB-BBBB", "confirm", nil)
			if status == http.StatusForbidden {
				// The right code does not help any more.
				return e.confirmForm(b, page, code, "confirm", nil)
			}
			return status, body
		}, http.StatusForbidden, proto.CodeLoginFailed, "wrong code"},
		{"another browser", func(e *testEnv, _ *http.Client, page, code string) (int, string) {
			return e.confirmForm(newBrowser(e.t), page, code, "confirm", nil)
		}, http.StatusForbidden, proto.CodeLoginPending, ""},
		{"cross-site post", func(e *testEnv, b *http.Client, page, code string) (int, string) {
			return e.confirmForm(b, page, code, "confirm", map[string]string{"Origin": "https://evil.example.com"})
		}, http.StatusForbidden, proto.CodeLoginPending, ""},
		{"cross-site post, default port", func(e *testEnv, b *http.Client, page, code string) (int, string) {
			return e.confirmForm(b, page, code, "confirm", map[string]string{"Origin": "http://127.0.0.1"})
		}, http.StatusForbidden, proto.CodeLoginPending, ""},
		{"cross-site fetch", func(e *testEnv, b *http.Client, page, code string) (int, string) {
			return e.confirmForm(b, page, code, "confirm", map[string]string{"Sec-Fetch-Site": "cross-site"})
		}, http.StatusForbidden, proto.CodeLoginPending, ""},
		{"forged csrf", func(e *testEnv, b *http.Client, page, code string) (int, string) {
			return e.confirmForm(b, strings.Replace(page, `name="csrf" value="`, `name="csrf" value="x`, 1), code, "confirm", nil)
		}, http.StatusForbidden, proto.CodeLoginPending, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			cli := e.startLogin("")
			e.iss.signIn("alice@example.com")
			b := newBrowser(t)
			_, page, _ := visit(t, b, cli.AuthURL)
			if status, body := tt.act(e, b, page, cli.UserCode); status != tt.status {
				t.Fatalf("confirmation POST = %d, want %d:\n%s", status, tt.status, body)
			}
			status, p, sess := e.pollLogin(cli.Handle, cli.verifier)
			if sess.Token != "" || p == nil || p.Code != tt.pollCode {
				t.Fatalf("poll = %d %+v %+v, want no session and %s", status, p, sess, tt.pollCode)
			}
			if tt.reason != "" {
				if ev := e.waitAudit(proto.AuditLoginUnbound); !strings.Contains(ev.Metadata["reason"], tt.reason) || ev.Outcome != proto.OutcomeDenied {
					t.Fatalf("audit = %+v, want reason %q", ev, tt.reason)
				}
			}
		})
	}
}

// TestLoginSweptAndCapped: the janitor forgets expired logins (auditing
// one signed in but never bound), and login/start refuses past the cap.
func TestLoginSweptAndCapped(t *testing.T) {
	// The cap holds against logins from many addresses; from this one
	// test address the per-source limit would answer 429 first.
	e := newTestEnvWith(t, func(c *Config) { c.SourceRate = -1 })
	max := e.srv.cfg.MaxPendingLogins
	if max != DefaultMaxPendingLogins {
		t.Fatalf("default cap = %d", max)
	}
	// Sign one in and leave it unconfirmed: the link was opened elsewhere.
	bound := e.startLogin("")
	e.iss.signIn("alice@example.com")
	visit(t, newBrowser(t), bound.AuthURL)
	for range max - 1 {
		e.startLogin("")
	}
	status, p := e.call("POST", "/api/v1/login/start", "", proto.LoginStartRequest{
		CodeChallenge: oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier()), CodeChallengeMethod: "S256"}, nil)
	if status != http.StatusServiceUnavailable || p.Code != proto.CodeTooManyLogins || !strings.Contains(p.Hint, "try again") {
		t.Fatalf("login/start past the cap = %d %+v, want 503 %s", status, p, proto.CodeTooManyLogins)
	}
	// Expire them all; the janitor, not a poll, must clear them.
	t0 := e.srv.now()
	e.srv.logins.mu.Lock()
	for _, pl := range e.srv.logins.byHandle {
		pl.expires = t0.Add(-time.Second)
	}
	e.srv.logins.mu.Unlock()
	testkit.WaitFor(t, "the pending logins to be swept", func() bool { return e.srv.logins.len() == 0 })
	ev := e.waitAudit(proto.AuditLoginUnbound)
	if ev.Actor != "alice@example.com" || !strings.Contains(ev.Metadata["reason"], "expired") {
		t.Fatalf("audit = %+v", ev)
	}
	if status, _, _ := e.pollLogin(bound.Handle, bound.verifier); status != http.StatusGone {
		t.Fatalf("poll of a swept login = %d, want 410", status)
	}
	e.startLogin("") // room again
}

// TestUserCode: codes have the documented shape and read back however
// they are typed.
func TestUserCode(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		c := newUserCode()
		if len(c) != 9 || c[4] != '-' || strings.Trim(strings.ReplaceAll(c, "-", ""), userCodeAlphabet) != "" {
			t.Fatalf("code %q", c)
		}
		seen[c] = true
	}
	if len(seen) < 99 {
		t.Fatalf("only %d distinct codes in 100", len(seen))
	}
	for in, want := range map[string]string{"bcdf-ghjk": "BCDFGHJK", " BCDF GHJK ": "BCDFGHJK", "bcdfghjk\n": "BCDFGHJK", "BCDF–GHJK": "BCDFGHJK"} {
		if got := normalizeUserCode(in); got != want {
			t.Errorf("normalizeUserCode(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzLoopbackRedirect: whatever login/start accepts as a redirect, the
// browser is sent to 127.0.0.1 or [::1] over plain http, also once the
// code is appended.
func FuzzLoopbackRedirect(f *testing.F) {
	for _, s := range []string{"http://127.0.0.1:8080/cb", "http://[::1]:1/", "http://localhost:1/", "http://127.0.0.1:1@evil.example.com/",
		"http://127.0.0.1:1\\@evil.example.com/", "http://127.0.0.1:1/#@evil", "http://[::ffff:127.0.0.1]:1/", "http://0x7f.1:1/", "http://127.0.0.1:1//evil.example.com"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if checkLoopbackRedirect(raw) != nil {
			return
		}
		u, err := url.Parse(raw + "?" + url.Values{"code": {"c"}}.Encode())
		if err != nil {
			t.Fatalf("accepted %q, but with the code it does not parse: %v", raw, err)
		}
		if u.Scheme != "http" || (u.Hostname() != "127.0.0.1" && u.Hostname() != "::1") || u.User != nil || u.Query().Get("code") != "c" || len(u.Query()) != 1 {
			t.Fatalf("accepted %q, which sends the code to %s", raw, u)
		}
	})
}

// FuzzDeviceText: what a device says about itself is shown bounded and
// printable.
func FuzzDeviceText(f *testing.F) {
	for _, s := range []string{"build-box", "", "a\x1b[31mred", strings.Repeat("x", 100), "\u202eevil"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := cleanDeviceText(s, 64)
		n := 0
		for _, r := range out {
			if !unicode.IsPrint(r) {
				t.Fatalf("cleanDeviceText(%q) = %q keeps %U", s, out, r)
			}
			n++
		}
		if n > 65 {
			t.Fatalf("cleanDeviceText(%q) has %d runes", s, n)
		}
	})
}

func TestOrigin(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		same bool
	}{
		{"https://c.example.com", "https://c.example.com:443/", true},
		{"https://C.example.com", "https://c.example.com", true},
		{"http://c.example.com", "http://c.example.com:80", true},
		{"http://c.example.com", "https://c.example.com", false},
		{"https://c.example.com:8443", "https://c.example.com", false},
		{"https://c.example.com.evil.example", "https://c.example.com", false},
		{"https://[::1]:7443", "https://[::1]:7443/x", true},
	} {
		a, _ := url.Parse(tt.a)
		b, _ := url.Parse(tt.b)
		if got := origin(a) == origin(b); got != tt.same {
			t.Errorf("origin(%s) == origin(%s) is %v, want %v", tt.a, tt.b, got, tt.same)
		}
	}
}

// FuzzLoginStartRequest: a login/start body that passes the checks names
// an S256 challenge and no redirect but a loopback one, and a refusal is
// a 400 with a hint and a bounded title.
func FuzzLoginStartRequest(f *testing.F) {
	ch := oauth2.S256ChallengeFromVerifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
	for _, s := range []string{
		`{"code_challenge":"` + ch + `","code_challenge_method":"S256"}`,
		`{"code_challenge":"` + ch + `","code_challenge_method":"S256","redirect_uri":"http://127.0.0.1:5000/cb","device":{"hostname":"h","os":"linux/amd64"}}`,
		`{"code_challenge":"` + ch + `","code_challenge_method":"plain"}`,
		`{"code_challenge":"` + ch + `","code_challenge_method":"S256","redirect_uri":"http://localhost:5000/cb"}`,
		`{}`, `null`, `{"code_challenge":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req proto.LoginStartRequest
		if json.Unmarshal(body, &req) != nil {
			return
		}
		p := checkLoginStart(req)
		if p != nil {
			if p.Status != http.StatusBadRequest || p.Hint == "" || len(p.Title) > 400 {
				t.Fatalf("refusal %+v", p)
			}
			return
		}
		if req.CodeChallengeMethod != "S256" || len(req.CodeChallenge) != 43 {
			t.Fatalf("accepted %+v", req)
		}
		if req.RedirectURI != "" {
			u, err := url.Parse(req.RedirectURI)
			if err != nil || u.Scheme != "http" || (u.Hostname() != "127.0.0.1" && u.Hostname() != "::1") {
				t.Fatalf("accepted redirect %q", req.RedirectURI)
			}
		}
	})
}
