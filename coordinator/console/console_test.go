package console_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	xhtml "golang.org/x/net/html"

	"github.com/clustral/clustral/cli/kubeconfig"
	"github.com/clustral/clustral/coordinator"
	"github.com/clustral/clustral/coordinator/console"
	"github.com/clustral/clustral/coordinator/coordinatortest"
	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// env is a coordinator with its console, a cluster "prod" and a role
// "admin" anyone may request.
type env struct {
	t *testing.T
	*coordinatortest.Coordinator
	admin proto.Session
}

func newEnv(t *testing.T) *env {
	t.Helper()
	c := coordinatortest.Start(t, time.Now, func(cfg *coordinator.Config) {
		cfg.Admins = []string{"root@example.com"}
		// TestRouteAccess loads the rate-limited sign-in page once for
		// every route of the console.
		cfg.SourceBurst = 100
	})
	e := &env{t: t, Coordinator: c}
	e.admin = c.Login("root@example.com")
	c.Do(e.admin.Token, "POST", proto.APIVersion+"/clusters", map[string]any{"name": "prod"}, nil)
	c.Do(e.admin.Token, "POST", proto.APIVersion+"/roles", proto.Role{Name: "admin", Groups: []string{"system:masters"}}, nil)
	return e
}

// browser is a person's browser: a cookie jar, and the last page it
// loaded.
type browser struct {
	e    *env
	hc   *http.Client
	page string
}

// newBrowser is a browser that follows no redirect by itself.
func (e *env) newBrowser() *browser {
	e.t.Helper()
	jar, _ := cookiejar.New(nil)
	hc := *e.Client()
	hc.Jar = jar
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &browser{e: e, hc: &hc}
}

// get loads u (a path on the coordinator, or a full URL) and follows
// redirects, recording each answer in hops; it returns the last.
func (b *browser) get(u string) (*http.Response, []*http.Response) {
	b.e.t.Helper()
	if strings.HasPrefix(u, "/") {
		u = b.e.URL + u
	}
	var hops []*http.Response
	for range 10 {
		resp, err := b.hc.Get(u)
		if err != nil {
			b.e.t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		b.page = string(body)
		hops = append(hops, resp)
		loc, err := resp.Location()
		if err != nil {
			return resp, hops
		}
		u = loc.String()
	}
	b.e.t.Fatalf("too many redirects from %s", u)
	return nil, nil
}

// signIn signs email in through the identity provider in b and returns
// the answer that set the session cookie.
func (e *env) signIn(email string) (*browser, *http.Response) {
	e.t.Helper()
	b := e.newBrowser()
	e.SignInNext(email)
	last, hops := b.get("/signin/start")
	if last.StatusCode != http.StatusOK || last.Request.URL.Path != "/" {
		e.t.Fatalf("sign-in ended at %s with %d:\n%s", last.Request.URL, last.StatusCode, b.page)
	}
	for _, h := range hops {
		if h.Request.URL.Path == console.SignInDonePath {
			return b, h
		}
	}
	e.t.Fatal("the sign-in never came back to the console")
	return nil, nil
}

// csrf is the CSRF token on b's last page.
func (b *browser) csrf() string {
	const attr = `name="csrf" value="`
	i := strings.Index(b.page, attr)
	if i < 0 {
		b.e.t.Fatalf("no CSRF token on the page:\n%s", b.page)
	}
	rest := b.page[i+len(attr):]
	return rest[:strings.IndexByte(rest, '"')]
}

// post submits form to path from a page of origin (empty: none), with
// extra headers, and returns the status, the redirect's target and the
// body.
func (b *browser) post(path string, form url.Values, origin string, hdr map[string]string) (int, string, string) {
	b.e.t.Helper()
	req, _ := http.NewRequest("POST", b.e.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		b.e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	b.page = string(body)
	return resp.StatusCode, resp.Header.Get("Location"), string(body)
}

// submit loads page and posts form to path with the page's CSRF token,
// as the console's own form does; it wants a redirect and follows it.
func (b *browser) submit(page, path string, form url.Values) string {
	b.e.t.Helper()
	b.get(page)
	form.Set("csrf", b.csrf())
	status, loc, body := b.post(path, form, b.e.URL, nil)
	if status != http.StatusSeeOther {
		b.e.t.Fatalf("POST %s = %d, want 303:\n%s", path, status, body)
	}
	b.get(loc)
	return b.page
}

func TestSignInCookie(t *testing.T) {
	e := newEnv(t)
	b, done := e.signIn("alice@example.com")
	var sc *http.Cookie
	for _, c := range done.Cookies() {
		if c.Name == "clustral_console" && c.Value != "" {
			sc = c
		}
	}
	if sc == nil {
		t.Fatalf("no session cookie set by %s: %v", console.SignInDonePath, done.Header["Set-Cookie"])
	}
	if !sc.HttpOnly || !sc.Secure || sc.SameSite != http.SameSiteLaxMode || sc.Path != "/" {
		t.Errorf("session cookie flags: HttpOnly %v Secure %v SameSite %v Path %q; want HttpOnly, Secure (TLS), Lax, /", sc.HttpOnly, sc.Secure, sc.SameSite, sc.Path)
	}
	if ttl := time.Until(sc.Expires); ttl > coordinator.DefaultConsoleSessionTTL || ttl < coordinator.DefaultConsoleSessionTTL-time.Minute {
		t.Errorf("session cookie lasts %v, want the console session's %v", ttl, coordinator.DefaultConsoleSessionTTL)
	}
	if !strings.Contains(b.page, "alice@example.com") || !strings.Contains(b.page, "You cannot reach any cluster") {
		t.Errorf("My access after sign-in does not show alice and the empty state:\n%s", b.page)
	}
	// The browser session is a coordinator session of its own kind,
	// listed among alice's sessions, and the sign-in is audited.
	b.get("/devices")
	if !strings.Contains(b.page, "browser (this browser)") {
		t.Errorf("the devices page does not list this browser's session:\n%s", b.page)
	}
	e.waitAudit(proto.AuditConsoleSignIn, "alice@example.com")

	// Signing out ends the session at the coordinator: the old cookie is
	// worth nothing afterwards.
	old := e.cookie(b)
	b.get("/")
	status, loc, _ := b.post("/signout", url.Values{"csrf": {b.csrf()}}, e.URL, nil)
	if status != http.StatusSeeOther || loc != "/signin" {
		t.Fatalf("sign out = %d to %q, want 303 to /signin", status, loc)
	}
	e.waitAudit(proto.AuditSessionRevoked, "alice@example.com")
	replay := e.newBrowser()
	u, _ := url.Parse(e.URL)
	replay.hc.Jar.SetCookies(u, []*http.Cookie{old})
	if last, _ := replay.get("/"); last.Request.URL.Path != "/signin" {
		t.Errorf("a signed-out session cookie still opens %s", last.Request.URL)
	}
}

// cookie is b's session cookie.
func (e *env) cookie(b *browser) *http.Cookie {
	e.t.Helper()
	u, _ := url.Parse(e.URL)
	for _, c := range b.hc.Jar.Cookies(u) {
		if c.Name == "clustral_console" {
			return c
		}
	}
	e.t.Fatal("no session cookie in the browser")
	return nil
}

// waitAudit waits for an audit event with code and actor.
func (e *env) waitAudit(code proto.AuditCode, actor string) proto.AuditEvent {
	e.t.Helper()
	var found proto.AuditEvent
	testkit.WaitFor(e.t, "audit event "+string(code)+" by "+actor, func() bool {
		var page proto.AuditPage
		e.Do(e.admin.Token, "GET", proto.APIVersion+"/audit/events?code="+string(code), nil, &page)
		for _, ev := range page.Events {
			if ev.Actor == actor {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

// TestSignInBoundToBrowser: a sign-in completes only in the browser that
// started it. An attacker who starts one and gets a victim to finish it
// at the identity provider, or who sends the victim the return link of
// their own sign-in, gets no session into either browser.
func TestSignInBoundToBrowser(t *testing.T) {
	e := newEnv(t)
	attacker, victim := e.newBrowser(), e.newBrowser()
	resp, err := attacker.hc.Get(e.URL + "/signin/start")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	authURL, err := resp.Location()
	if err != nil {
		t.Fatalf("sign-in start did not send the browser to the identity provider: %d", resp.StatusCode)
	}
	e.SignInNext("victim@example.com")
	last, _ := victim.get(authURL.String())
	if last.StatusCode != http.StatusUnauthorized || !strings.Contains(victim.page, "not started in this browser") {
		t.Errorf("the victim's browser finishing the attacker's sign-in = %d:\n%s", last.StatusCode, victim.page)
	}
	for _, b := range []*browser{attacker, victim} {
		if last, _ := b.get("/"); last.Request.URL.Path != "/signin" {
			t.Errorf("a browser holds a session after a sign-in bound elsewhere: it opened %s", last.Request.URL)
		}
	}
	// The code was spent where it landed, and the sign-in audited as
	// not bound to the browser that started it.
	ev := e.waitAudit(proto.AuditLoginUnbound, "victim@example.com")
	if ev.Metadata["hostname"] != "web console" {
		t.Errorf("unbound sign-in audited as %+v", ev)
	}
}

func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t)
	b, _ := e.signIn("root@example.com")
	for _, path := range []string{"/signin", "/", "/connect", "/requests", "/devices", "/approvals", "/admin/clusters", "/admin/users", "/admin/roles", "/admin/roles/new", "/admin/assignments", "/admin/audit", "/static/console.js", "/nope"} {
		resp, _ := b.get(path)
		h := resp.Header
		if path == "/nope" {
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET /nope = %d, want 404", resp.StatusCode)
			}
			continue
		}
		csp := h.Get("Content-Security-Policy")
		for _, want := range []string{"script-src 'self'", "frame-ancestors 'none'", "default-src 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("%s: CSP %q lacks %q", path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("%s: CSP %q allows inline or eval", path, csp)
		}
		if h.Get("X-Content-Type-Options") != "nosniff" || h.Get("Referrer-Policy") != "same-origin" || h.Get("X-Frame-Options") != "DENY" {
			t.Errorf("%s: headers %v lack nosniff, same-origin referrers or DENY", path, h)
		}
		if strings.Contains(b.page, "<script>") || strings.Contains(b.page, " on") && strings.Contains(b.page, "onclick=") {
			t.Errorf("%s has an inline script or handler", path)
		}
	}
}

// TestCSRF: a state-changing request must come from the console's origin
// with the session's token.
func TestCSRF(t *testing.T) {
	e := newEnv(t)
	b, _ := e.signIn("alice@example.com")
	b.get("/requests")
	token := b.csrf()
	form := func(tok string) url.Values {
		return url.Values{"csrf": {tok}, "cluster": {"prod"}, "role": {"admin"}, "duration": {"1h"}, "reason": {"INC-1"}}
	}
	for _, tc := range []struct {
		name, origin, token string
		hdr                 map[string]string
		want                int
	}{
		{"other origin", "https://evil.example", token, nil, http.StatusForbidden},
		{"same host other port", "https://127.0.0.1:1", token, nil, http.StatusForbidden},
		{"no origin", "", token, nil, http.StatusForbidden},
		{"cross-site fetch", e.URL, token, map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"no token", e.URL, "", nil, http.StatusForbidden},
		{"wrong token", e.URL, "x" + token[1:], nil, http.StatusForbidden},
		{"another session's token", e.URL, func() string { o, _ := e.signIn("bob@example.com"); o.get("/requests"); return o.csrf() }(), nil, http.StatusForbidden},
		{"good", e.URL, token, map[string]string{"Sec-Fetch-Site": "same-origin"}, http.StatusSeeOther},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, _, body := b.post("/requests", form(tc.token), tc.origin, tc.hdr)
			if status != tc.want {
				t.Fatalf("POST /requests = %d, want %d:\n%s", status, tc.want, body)
			}
			if status == http.StatusForbidden && !strings.Contains(body, "refused") {
				t.Errorf("the refusal has no sentence:\n%s", body)
			}
		})
	}
	var reqs []proto.AccessRequest
	e.Do(e.admin.Token, "GET", proto.APIVersion+"/access-requests", nil, &reqs)
	if len(reqs) != 1 {
		t.Errorf("%d requests were made, want only the good one's", len(reqs))
	}
}

// TestRouteAccess goes through every route of the console: without a
// session a page sends the browser to sign in and a POST is refused
// (401); a
// user who is not an administrator gets a 403 page on every admin route,
// GET or POST.
func TestRouteAccess(t *testing.T) {
	e := newEnv(t)
	bob, _ := e.signIn("bob@example.com")
	bob.get("/")
	token := bob.csrf()
	anon := e.newBrowser()
	for _, rt := range console.Routes() {
		path := wildcard.ReplaceAllString(strings.ReplaceAll(rt.Pattern, "{$}", ""), "x")
		t.Run(rt.Method+" "+rt.Pattern, func(t *testing.T) {
			if rt.Access == console.Public {
				return
			}
			var status int
			var loc string
			if rt.Method == "GET" {
				resp, _ := anon.get(path)
				status, loc = resp.StatusCode, resp.Request.URL.Path
				if loc != "/signin" || status != http.StatusOK {
					t.Errorf("anonymous GET %s ended at %s with %d, want the sign-in page", path, loc, status)
				}
			} else if status, _, _ = anon.post(path, url.Values{"csrf": {token}}, e.URL, nil); status != http.StatusUnauthorized {
				t.Errorf("anonymous POST %s = %d, want 401", path, status)
			}
			if rt.Access != console.Admin {
				return
			}
			var body string
			if rt.Method == "GET" {
				resp, _ := bob.get(path)
				status, body = resp.StatusCode, bob.page
			} else {
				status, _, body = bob.post(path, url.Values{"csrf": {token}, "reason": {"no"}}, e.URL, nil)
			}
			if status != http.StatusForbidden || !strings.Contains(body, "is not an administrator") {
				t.Errorf("non-admin %s %s = %d, want 403 with a sentence:\n%s", rt.Method, path, status, body)
			}
		})
	}
}

// wildcard is a path wildcard of a route pattern.
var wildcard = regexp.MustCompile(`\{[a-z]+\}`)

// Text that would be markup if it were not escaped.
var hostile = []string{`<script>alert(1)</script>`, `"><img src=x onerror=alert(1)>`}

// TestRequestFlow: alice requests access, the admin sees it in the live
// queue, shortens and approves it, alice sees the grant with its end;
// the admin's own request cannot be approved by themselves, and the
// console shows the coordinator's sentence.
func TestRequestFlow(t *testing.T) {
	e := newEnv(t)
	alice, _ := e.signIn("alice@example.com")
	root, _ := e.signIn("root@example.com")

	// The admin's live queue, open before the request is made.
	events := root.events("/approvals/events")
	first := testkit.Recv(t, events, "a queue event")
	if !strings.Contains(first, "No request is waiting") {
		t.Fatalf("first queue event is not the empty queue:\n%s", first)
	}

	reason := "INC-7 " + strings.Join(hostile, " ")
	page := alice.submit("/requests", "/requests", url.Values{"cluster": {"prod"}, "role": {"admin"}, "duration": {"2h"}, "reason": {reason}})
	if !strings.Contains(page, "sent to the approvers") || !strings.Contains(page, "pending") {
		t.Fatalf("after the request, the page does not show it pending:\n%s", page)
	}
	var reqs []proto.AccessRequest
	e.Do(e.admin.Token, "GET", proto.APIVersion+"/access-requests", nil, &reqs)
	if len(reqs) != 1 || reqs[0].Reason != reason {
		t.Fatalf("requests = %+v, want alice's with the reason as typed", reqs)
	}
	id := reqs[0].ID

	live := testkit.Recv(t, events, "a queue event")
	if !strings.Contains(live, "req-"+id) {
		t.Fatalf("the live queue did not show the new request:\n%s", live)
	}
	root.get("/approvals")
	for _, p := range []string{live, root.page, page} {
		for _, h := range hostile {
			if strings.Contains(p, h) || strings.Contains(p, "<img") {
				t.Errorf("the reason %q is markup on a page:\n%s", h, p)
			}
		}
		if !strings.Contains(p, "&lt;script&gt;alert(1)&lt;/script&gt;") {
			t.Errorf("the reason is not shown as text:\n%s", p)
		}
	}

	// Approving shorter than asked.
	page = root.submit("/approvals", "/approvals/"+id+"/approve", url.Values{"duration": {"30m"}})
	if !strings.Contains(page, "was approved") {
		t.Fatalf("after approving, the queue says:\n%s", page)
	}
	alice.get("/")
	if !strings.Contains(alice.page, "prod") || !strings.Contains(alice.page, `class="role">admin`) || !strings.Contains(alice.page, "data-until=") {
		t.Errorf("alice's access does not show admin on prod with its end:\n%s", alice.page)
	}
	e.Do(e.admin.Token, "GET", proto.APIVersion+"/access-requests", nil, &reqs)
	if got := time.Until(*reqs[0].GrantExpires); got > 30*time.Minute || got < 29*time.Minute {
		t.Errorf("grant ends in %v, want the shortened 30m", got)
	}

	// Nobody approves their own request.
	root.submit("/requests", "/requests", url.Values{"cluster": {"prod"}, "role": {"admin"}, "duration": {"1h"}, "reason": {"mine"}})
	e.Do(e.admin.Token, "GET", proto.APIVersion+"/access-requests?state=pending", nil, &reqs)
	root.get("/approvals")
	status, _, body := root.post("/approvals/"+reqs[0].ID+"/approve", url.Values{"csrf": {root.csrf()}}, e.URL, nil)
	if status != http.StatusForbidden || !strings.Contains(body, "Nobody approves or denies their own request. Ask another approver.") {
		t.Errorf("self-approval = %d:\n%s", status, body)
	}

	// Alice withdraws nothing pending; denying needs a reason.
	status, _, body = root.post("/approvals/"+reqs[0].ID+"/deny", url.Values{"csrf": {root.csrf()}}, e.URL, nil)
	if status != http.StatusForbidden {
		t.Errorf("denying one's own request = %d:\n%s", status, body)
	}
}

// events opens an SSE stream on path and returns a channel of its
// events' data, each event's lines joined, closed when the stream ends;
// the test's end closes the stream.
func (b *browser) events(path string) <-chan string {
	b.e.t.Helper()
	req, _ := http.NewRequest("GET", b.e.URL+path, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := b.hc.Do(req)
	if err != nil {
		b.e.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		resp.Body.Close()
		b.e.t.Fatalf("GET %s = %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	ch := make(chan string, 16)
	done := make(chan struct{})
	b.e.t.Cleanup(func() { resp.Body.Close(); <-done })
	go func() {
		defer close(done)
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		var ev strings.Builder
		for sc.Scan() {
			l := sc.Text()
			switch {
			case strings.HasPrefix(l, "data: "):
				ev.WriteString(strings.TrimPrefix(l, "data: ") + "\n")
			case l == "" && ev.Len() > 0:
				select {
				case ch <- ev.String():
				default:
				}
				ev.Reset()
			}
		}
	}()
	return ch
}

func TestCancelAndDevices(t *testing.T) {
	e := newEnv(t)
	alice, _ := e.signIn("alice@example.com")
	alice.submit("/requests", "/requests", url.Values{"cluster": {"prod"}, "role": {"admin"}, "duration": {"1h"}, "reason": {"x"}})
	var reqs []proto.AccessRequest
	e.Do(e.admin.Token, "GET", proto.APIVersion+"/access-requests", nil, &reqs)
	page := alice.submit("/requests", "/requests/"+reqs[0].ID+"/cancel", url.Values{})
	if !strings.Contains(page, "withdrawn") || !strings.Contains(page, "revoked") {
		t.Errorf("after cancelling, the page says:\n%s", page)
	}

	// A terminal session of alice's, ended from the browser.
	cli := e.Login("alice@example.com")
	alice.get("/devices")
	if !strings.Contains(alice.page, ">terminal<") {
		t.Fatalf("the terminal session is not listed:\n%s", alice.page)
	}
	var sessions []proto.SessionInfo
	e.Do(cli.Token, "GET", proto.APIVersion+"/sessions", nil, &sessions)
	var other string
	for _, s := range sessions {
		if s.Kind == "" {
			other = s.ID
		}
	}
	page = alice.submit("/devices", "/sessions/"+other+"/end", url.Values{})
	if !strings.Contains(page, "session was ended") || strings.Contains(page, ">terminal<") {
		t.Errorf("after ending the terminal session, the page says:\n%s", page)
	}
	e.waitAudit(proto.AuditSessionEnded, "alice@example.com")
	if _, err := coordclient.New(e.URL, cli.Token, e.Client()).Whoami(t.Context()); !coordclient.IsRefused(err) {
		t.Errorf("the ended terminal session still answers whoami: %v", err)
	}
}

func TestConnectLines(t *testing.T) {
	e := newEnv(t)
	alice, _ := e.signIn("alice@example.com")
	alice.get("/connect")
	if !strings.Contains(alice.page, `data-copy="clustral login `+e.URL+`"`) || !strings.Contains(alice.page, "You cannot reach any cluster yet") {
		t.Errorf("connect page lacks the login line or the empty state:\n%s", alice.page)
	}
	e.Do(e.admin.Token, "POST", proto.APIVersion+"/assignments", proto.Assignment{User: "alice@example.com", Role: "admin", Cluster: "prod"}, nil)
	alice.get("/connect")
	if want := "kubectl --context " + kubeconfig.ContextName("prod") + " get pods"; !strings.Contains(alice.page, want) {
		t.Errorf("connect page lacks %q:\n%s", want, alice.page)
	}
}

// markupFree fails t if page holds any of the hostile strings as markup,
// or does not show the first as text.
func markupFree(t *testing.T, where, page string) {
	t.Helper()
	for _, h := range hostile {
		if strings.Contains(page, h) || strings.Contains(page, "<img") {
			t.Errorf("%s: %q is markup on the page:\n%s", where, h, page)
		}
	}
	if !strings.Contains(page, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Errorf("%s: the hostile text is not shown as text:\n%s", where, page)
	}
}

// TestAdminPages: clusters (a new cluster's join token shown once, its
// hostile label as text), roles (a hostile description as text), users
// (disable and enable, never oneself), and the audit log (filters,
// paging, a hostile field as text, the chain verified).
func TestAdminPages(t *testing.T) {
	e := newEnv(t)
	e.Do(e.admin.Token, "POST", proto.APIVersion+"/roles", proto.Role{Name: "viewer", Description: strings.Join(hostile, " "), Groups: []string{"view"},
		Restrictions: &proto.Restrictions{Namespaces: []string{"dev"}}}, nil)
	alice, _ := e.signIn("alice@example.com")
	root, _ := e.signIn("root@example.com")

	// A new cluster: its token is on the answer, and on no later page.
	root.get("/admin/clusters")
	status, _, page := root.post("/admin/clusters", url.Values{"csrf": {root.csrf()}, "name": {"staging"},
		"labels": {"team=" + hostile[0] + ", env=" + hostile[1]}}, e.URL, nil)
	if status != http.StatusOK || !strings.Contains(page, "Shown only this once") || !strings.Contains(page, "--from-literal=token=cjt_") {
		t.Fatalf("adding a cluster = %d, without the join token and its install lines:\n%s", status, page)
	}
	markupFree(t, "clusters", page)
	root.get("/admin/clusters")
	if strings.Contains(root.page, "cjt_") || !strings.Contains(root.page, "staging") {
		t.Errorf("the clusters page shows a join token again, or not the cluster:\n%s", root.page)
	}
	status, _, page = root.post("/admin/clusters", url.Values{"csrf": {root.csrf()}, "name": {"Bad Name"}, "labels": {"oops"}}, e.URL, nil)
	if status != http.StatusBadRequest || !strings.Contains(page, `Label &#34;oops&#34; is not key=value`) || !strings.Contains(page, `value="Bad Name"`) {
		t.Errorf("a bad label = %d, without its sentence or the form as typed:\n%s", status, page)
	}
	root.get("/admin/clusters")
	status, _, page = root.post("/admin/clusters/staging/rotate-token", url.Values{"csrf": {root.csrf()}}, e.URL, nil)
	if status != http.StatusOK || !strings.Contains(page, "Join token for staging") {
		t.Errorf("rotating the token = %d:\n%s", status, page)
	}

	// Roles, with the description as text and the limits in words.
	root.get("/admin/roles")
	markupFree(t, "roles", root.page)
	if !strings.Contains(root.page, "<dt>Namespaces</dt><dd>dev</dd>") {
		t.Errorf("the roles page does not show viewer's limit:\n%s", root.page)
	}

	// Users: alice disabled is signed out of the console too; enabled
	// again. Nobody disables themselves.
	page = root.submit("/admin/users", "/admin/users/alice@example.com/disable", url.Values{})
	if !strings.Contains(page, "was disabled") || !strings.Contains(page, ">disabled<") {
		t.Errorf("after disabling alice:\n%s", page)
	}
	if last, _ := alice.get("/"); last.StatusCode != http.StatusForbidden && last.Request.URL.Path != "/signin" {
		t.Errorf("disabled alice still sees %s (%d)", last.Request.URL, last.StatusCode)
	}
	root.submit("/admin/users", "/admin/users/alice@example.com/enable", url.Values{})
	if strings.Contains(root.page, "root@example.com/disable") {
		t.Errorf("the users page offers to disable oneself:\n%s", root.page)
	}

	// Audit: a request's hostile reason, found by user, shown as text.
	alice, _ = e.signIn("alice@example.com")
	alice.submit("/requests", "/requests", url.Values{"cluster": {"staging"}, "role": {"viewer"}, "duration": {"1h"}, "reason": {hostile[0] + hostile[1]}})
	e.waitAudit(proto.AuditAccessRequested, "alice@example.com")
	root.get("/admin/audit?user=alice@example.com&code=" + string(proto.AuditAccessRequested))
	if strings.Count(root.page, "<details>") != 1 {
		t.Errorf("the audit page filtered by alice's request shows %d events, want 1:\n%s", strings.Count(root.page, "<details>"), root.page)
	}
	markupFree(t, "audit", root.page)
	root.get("/admin/audit?from=yesterday")
	if !strings.Contains(root.page, `class="error"`) {
		t.Errorf("a bad time filter gives no sentence:\n%s", root.page)
	}
	root.get("/admin/audit")
	status, _, page = root.post("/admin/audit/verify", url.Values{"csrf": {root.csrf()}}, e.URL, nil)
	if status != http.StatusOK || !strings.Contains(page, "The hash chain verifies") {
		t.Errorf("verifying the chain = %d:\n%s", status, page)
	}
}

// TestAuditPaging: the audit page shows a page of events and links the
// older ones, keeping the filter.
func TestAuditPaging(t *testing.T) {
	e := newEnv(t)
	for range 8 {
		e.Login("bob@example.com")
	}
	root, _ := e.signIn("root@example.com")
	testkit.WaitFor(t, "bob's 8 logins in the audit log", func() bool {
		var page proto.AuditPage
		e.Do(e.admin.Token, "GET", proto.APIVersion+"/audit/events?user=bob@example.com", nil, &page)
		return len(page.Events) == 8
	})
	root.get("/admin/audit?user=bob@example.com&limit=5")
	if n := strings.Count(root.page, "<details>"); n != 5 {
		t.Fatalf("first page shows %d events, want 5", n)
	}
	i := strings.Index(root.page, `href="/admin/audit?`)
	if i < 0 {
		t.Fatalf("no link to older events:\n%s", root.page)
	}
	next := root.page[i+len(`href="`):]
	next = strings.ReplaceAll(next[:strings.IndexByte(next, '"')], "&amp;", "&")
	if !strings.Contains(next, "user=bob%40example.com") || !strings.Contains(next, "limit=5") {
		t.Errorf("the next page's link %q drops the filter", next)
	}
	root.get(next)
	if n := strings.Count(root.page, "<details>"); n != 3 || strings.Contains(root.page, "Older events") {
		t.Errorf("second page shows %d events, want the 3 left and no further page", n)
	}
	if !strings.Contains(root.page, `<a class="button" href="/admin/audit?limit=5&amp;user=bob%40example.com">Newest events</a>`) {
		t.Errorf("the second page does not link back to the newest with the filter:\n%s", root.page)
	}
}

// TestAssignments: an administrator assigns a role to a user for a
// while and to a group by labels, sees a bad selector's sentence with
// the form kept, and removes an assignment; the user's My access
// follows.
func TestAssignments(t *testing.T) {
	e := newEnv(t)
	alice, _ := e.signIn("alice@example.com")
	root, _ := e.signIn("root@example.com")

	page := root.submit("/admin/assignments", "/admin/assignments", url.Values{"who": {"user"}, "name": {"alice@example.com"}, "role": {"admin"}, "cluster": {"prod"}, "for": {"1h"}})
	if !strings.Contains(page, "was assigned") || !strings.Contains(page, "data-until=") {
		t.Fatalf("after assigning:\n%s", page)
	}
	alice.get("/")
	if !strings.Contains(alice.page, `class="role">admin`) || !strings.Contains(alice.page, "Ends <time") {
		t.Errorf("alice's access does not show the assignment with its end:\n%s", alice.page)
	}

	root.get("/admin/assignments")
	status, _, page := root.post("/admin/assignments", url.Values{"csrf": {root.csrf()}, "who": {"group"}, "name": {"developers"}, "role": {"admin"}, "selector": {"env"}}, e.URL, nil)
	if status != http.StatusBadRequest || !strings.Contains(page, "is not key=value") || !strings.Contains(page, `value="developers"`) {
		t.Errorf("a bad selector = %d:\n%s", status, page)
	}
	page = root.submit("/admin/assignments", "/admin/assignments", url.Values{"who": {"group"}, "name": {"developers"}, "role": {"admin"}, "selector": {"env=prod"}})
	if !strings.Contains(page, "group developers") || !strings.Contains(page, "env=prod") {
		t.Errorf("the group assignment is not listed:\n%s", page)
	}

	var as []proto.Assignment
	e.Do(e.admin.Token, "GET", proto.APIVersion+"/assignments", nil, &as)
	for _, a := range as {
		if a.User == "alice@example.com" {
			root.submit("/admin/assignments", "/admin/assignments/"+a.ID+"/delete", url.Values{})
		}
	}
	alice.get("/")
	if !strings.Contains(alice.page, "You cannot reach any cluster") {
		t.Errorf("alice still reaches a cluster after the assignment was removed:\n%s", alice.page)
	}
}

// TestAuditTail: the audit page's live tail sends the events recorded
// after it opened that match its filter, rendered as text.
func TestAuditTail(t *testing.T) {
	e := newEnv(t)
	root, _ := e.signIn("root@example.com")
	alice, _ := e.signIn("alice@example.com")
	root.get("/admin/audit?user=alice@example.com")
	if !strings.Contains(root.page, `data-live="/admin/audit/events?user=alice%40example.com"`) {
		t.Fatalf("the audit page has no live tail with its filter:\n%s", root.page)
	}
	tail := root.events("/admin/audit/events?user=alice@example.com")
	e.Do(e.admin.Token, "POST", proto.APIVersion+"/clusters", map[string]any{"name": "other"}, nil) // not alice's: not sent
	alice.submit("/requests", "/requests", url.Values{"cluster": {"prod"}, "role": {"admin"}, "duration": {"1h"}, "reason": {hostile[0]}})
	ev := testkit.Recv(t, tail, "a live audit event")
	if !strings.Contains(ev, string(proto.AuditAccessRequested)) || strings.Contains(ev, "CL001I") {
		t.Errorf("the tail sent, for alice's filter:\n%s", ev)
	}
	markupFree(t, "audit tail", ev)
}

// TestRoleForm: an administrator creates and edits a role in the form;
// the coordinator's refusal shows beside the field it names, with the
// form kept as typed, and a role's time windows survive an edit.
func TestRoleForm(t *testing.T) {
	e := newEnv(t)
	e.Do(e.admin.Token, "POST", proto.APIVersion+"/roles", proto.Role{Name: "office", Groups: []string{"edit"},
		Restrictions: &proto.Restrictions{TimeWindows: []proto.TimeWindow{{Days: []string{"mon"}, Start: "09:00", End: "17:00"}}}}, nil)
	root, _ := e.signIn("root@example.com")

	form := url.Values{"name": {"deployer"}, "description": {hostile[0]}, "groups": {"edit, view"}, "namespaces": {"dev,\nstaging"}, "verbs": {"get, steal"}}
	root.get("/admin/roles/new")
	form.Set("csrf", root.csrf())
	status, _, page := root.post("/admin/roles/new", form, e.URL, nil)
	if status != http.StatusBadRequest || !strings.Contains(page, `id="err-verbs"`) || !strings.Contains(page, `verb &#34;steal&#34;`) {
		t.Fatalf("a bad verb = %d, without its error beside the verbs field:\n%s", status, page)
	}
	if !strings.Contains(page, `value="get, steal"`) || !strings.Contains(page, `aria-errormessage="err-verbs"`) {
		t.Errorf("the form is not kept as typed, or the field not marked:\n%s", page)
	}
	markupFree(t, "role form", page)

	form.Set("verbs", "get, list")
	status, loc, page := root.post("/admin/roles/new", form, e.URL, nil)
	if status != http.StatusSeeOther {
		t.Fatalf("creating the fixed role = %d:\n%s", status, page)
	}
	root.get(loc)
	if !strings.Contains(root.page, "role was saved") || !strings.Contains(root.page, "<dt>Namespaces</dt><dd>dev, staging</dd>") {
		t.Errorf("the new role is not listed with its limits:\n%s", root.page)
	}

	// The name of another role: the error is beside the name.
	root.get("/admin/roles/deployer/edit")
	if !strings.Contains(root.page, `value="edit, view"`) {
		t.Fatalf("the edit form is not filled in:\n%s", root.page)
	}
	status, _, page = root.post("/admin/roles/deployer/edit", url.Values{"csrf": {root.csrf()}, "name": {"office"}, "groups": {"edit"}}, e.URL, nil)
	if status != http.StatusConflict || !strings.Contains(page, `id="err-name"`) {
		t.Errorf("renaming onto another role = %d, without the error beside the name:\n%s", status, page)
	}

	// Editing shows the role's windows, and keeps them.
	root.get("/admin/roles/office/edit")
	form = roleFormValues(t, root.page)
	if form.Get("windows") != "2" || !slices.Equal(form["window_days_0"], []string{"mon"}) || form.Get("window_start_0") != "09:00" || form.Get("window_end_0") != "17:00" {
		t.Fatalf("the edit form does not show office's window (and a row to add one): %v\n%s", form, root.page)
	}
	form.Set("description", "office hours only")
	save := func(form url.Values) (int, string) {
		t.Helper()
		form.Set("csrf", root.csrf())
		status, _, page := root.post("/admin/roles/office/edit", form, e.URL, nil)
		return status, page
	}
	windows := func() []string {
		t.Helper()
		var ro proto.Role
		e.Do(e.admin.Token, "GET", proto.APIVersion+"/roles/office", nil, &ro)
		var out []string
		if ro.Restrictions != nil {
			for _, w := range ro.Restrictions.TimeWindows {
				out = append(out, w.String())
			}
		}
		return out
	}
	if status, page := save(form); status != http.StatusSeeOther {
		t.Fatalf("saving office = %d:\n%s", status, page)
	}
	if got := windows(); !slices.Equal(got, []string{"mon 09:00-17:00 UTC"}) {
		t.Errorf("after the edit, office's windows = %q, want its window kept", got)
	}

	// Adding a window in the empty row.
	root.get("/admin/roles/office/edit")
	form = roleFormValues(t, root.page)
	form["window_days_1"] = []string{"sun", "sat"}
	form.Set("window_start_1", "10:00")
	form.Set("window_end_1", "14:00")
	form.Set("window_tz_1", "Europe/Berlin")
	if status, page := save(form); status != http.StatusSeeOther {
		t.Fatalf("adding a window = %d:\n%s", status, page)
	}
	if got := windows(); !slices.Equal(got, []string{"mon 09:00-17:00 UTC", "sat,sun 10:00-14:00 Europe/Berlin"}) {
		t.Errorf("after adding a window, office's windows = %q", got)
	}

	// The coordinator's refusal of a window shows beside its row, with
	// the form as typed; nothing is saved.
	root.get("/admin/roles/office/edit")
	form = roleFormValues(t, root.page)
	form.Set("window_start_1", "9")
	form.Set("window_tz_1", hostile[1])
	form.Set("description", hostile[0])
	status, page = save(form)
	if status != http.StatusBadRequest || !strings.Contains(page, `id="err-window-1"`) || !strings.Contains(page, `aria-errormessage="err-window-1"`) {
		t.Fatalf("a bad window = %d, without its error beside its row:\n%s", status, page)
	}
	errText := regexp.MustCompile(`id="err-window-1">([^<]*)<`).FindStringSubmatch(page)
	if errText == nil || !strings.Contains(errText[1], "Time window 2: start: &#34;9&#34; is not a time of day") {
		t.Errorf("the error beside window 2 = %q, want the coordinator's sentence naming its start", errText)
	}
	if strings.Contains(page, `id="err-window-0"`) {
		t.Errorf("window 1, which is fine, is marked:\n%s", page)
	}
	if kept := roleFormValues(t, page); kept.Get("window_start_1") != "9" || kept.Get("window_tz_1") != hostile[1] || kept.Get("description") != hostile[0] {
		t.Errorf("the form is not kept as typed: %v", kept)
	}
	markupFree(t, "role form with a bad window", page)
	if got := windows(); len(got) != 2 {
		t.Errorf("a refused edit changed the windows: %q", got)
	}

	// Removing a window, then the last one.
	for _, want := range [][]string{{"sat,sun 10:00-14:00 Europe/Berlin"}, nil} {
		root.get("/admin/roles/office/edit")
		form = roleFormValues(t, root.page)
		form.Set("window_remove_0", "1")
		if status, page := save(form); status != http.StatusSeeOther {
			t.Fatalf("removing a window = %d:\n%s", status, page)
		}
		if got := windows(); !slices.Equal(got, want) {
			t.Errorf("after removing window 1, office's windows = %q, want %q", got, want)
		}
	}

	// A new role with a window.
	root.get("/admin/roles/new")
	form = roleFormValues(t, root.page)
	form.Set("name", "night")
	form.Set("groups", "view")
	form.Set("window_start_0", "22:00")
	form.Set("window_end_0", "06:00")
	form.Set("csrf", root.csrf())
	if status, _, page := root.post("/admin/roles/new", form, e.URL, nil); status != http.StatusSeeOther {
		t.Fatalf("creating a role with a window = %d:\n%s", status, page)
	}
	var night proto.Role
	e.Do(e.admin.Token, "GET", proto.APIVersion+"/roles/night", nil, &night)
	if night.Restrictions == nil || len(night.Restrictions.TimeWindows) != 1 || night.Restrictions.TimeWindows[0].String() != "daily 22:00-06:00 UTC" {
		t.Errorf("night = %+v, want the window daily 22:00-06:00 UTC", night.Restrictions)
	}
}

// roleFormValues reads the values the role form on page would send: its
// text inputs and text areas, its hidden inputs but the CSRF token, and
// its ticked checkboxes.
func roleFormValues(t *testing.T, page string) url.Values {
	t.Helper()
	doc, err := xhtml.Parse(strings.NewReader(page))
	if err != nil {
		t.Fatal(err)
	}
	v := url.Values{}
	attr := func(n *xhtml.Node, k string) (string, bool) {
		for _, a := range n.Attr {
			if a.Key == k {
				return a.Val, true
			}
		}
		return "", false
	}
	for n := range doc.Descendants() {
		if n.Type != xhtml.ElementNode {
			continue
		}
		name, ok := attr(n, "name")
		if !ok || name == "csrf" {
			continue
		}
		switch n.Data {
		case "textarea":
			text := ""
			if n.FirstChild != nil {
				text = n.FirstChild.Data
			}
			v.Add(name, strings.TrimPrefix(text, "\n"))
		case "input":
			typ, _ := attr(n, "type")
			val, _ := attr(n, "value")
			if _, checked := attr(n, "checked"); typ == "checkbox" && !checked {
				continue
			}
			v.Add(name, val)
		}
	}
	return v
}

// TestUserPage: an administrator sees a user's assignments (their own
// and their groups') and devices, and revokes a device from there.
func TestUserPage(t *testing.T) {
	e := newEnv(t)
	cli := e.LoginClaims(map[string]any{"email": "alice@example.com", "groups": []string{"developers"}})
	e.Do(e.admin.Token, "POST", proto.APIVersion+"/assignments", proto.Assignment{Group: "developers", Role: "admin", Cluster: "prod"}, nil)
	var key [32]byte
	key[0] = 1
	var dev proto.RegisterResponse
	e.Do(cli.Token, "POST", proto.APIVersion+"/devices", proto.RegisterDeviceRequest{PublicKey: proto.Key(key), Hostname: "alice-laptop"}, &dev)
	root, _ := e.signIn("root@example.com")

	root.get("/admin/users")
	if !strings.Contains(root.page, `href="/admin/users/alice@example.com"`) {
		t.Fatalf("the users page does not link alice's page:\n%s", root.page)
	}
	root.get("/admin/users/alice@example.com")
	if !strings.Contains(root.page, "through the group developers") || !strings.Contains(root.page, "alice-laptop") {
		t.Fatalf("alice's page lacks her group's assignment or her device:\n%s", root.page)
	}
	if want := `action="/admin/users/alice@example.com/devices/` + dev.NodeID + `/revoke"`; !strings.Contains(root.page, want) {
		t.Errorf("alice's page lacks the revoke form %s:\n%s", want, root.page)
	}
	page := root.submit("/admin/users/alice@example.com", "/admin/users/alice@example.com/devices/"+dev.NodeID+"/revoke", url.Values{})
	if !strings.Contains(page, "device was revoked") || strings.Contains(page, "alice-laptop") {
		t.Errorf("after revoking alice's device:\n%s", page)
	}
	if last, _ := root.get("/admin/users/nobody@example.com"); last.StatusCode != http.StatusNotFound {
		t.Errorf("an unknown user's page = %d, want 404", last.StatusCode)
	}
}

// TestApprovers: a member of a role's approver groups, not an
// administrator, decides requests for that role from the queue; a user
// who may approve nothing sees an empty queue and the coordinator's
// refusal if they post a decision anyway.
func TestApprovers(t *testing.T) {
	e := newEnv(t)
	e.Do(e.admin.Token, "POST", proto.APIVersion+"/roles", proto.Role{Name: "editor", Groups: []string{"edit"}, ApproverGroups: []string{"ops"}}, nil)
	e.SignInNext("bob@example.com", "ops")
	bob := e.newBrowser()
	if last, _ := bob.get("/signin/start"); last.Request.URL.Path != "/" {
		t.Fatalf("bob's sign-in ended at %s", last.Request.URL)
	}
	alice, _ := e.signIn("alice@example.com")
	carol, _ := e.signIn("carol@example.com")
	alice.submit("/requests", "/requests", url.Values{"cluster": {"prod"}, "role": {"editor"}, "duration": {"1h"}, "reason": {"deploy"}})
	var reqs []proto.AccessRequest
	e.Do(e.admin.Token, "GET", proto.APIVersion+"/access-requests", nil, &reqs)

	carol.get("/approvals")
	if !strings.Contains(carol.page, "No request is waiting for your decision") {
		t.Errorf("carol, who approves nothing, sees a queue:\n%s", carol.page)
	}
	status, _, page := carol.post("/approvals/"+reqs[0].ID+"/approve", url.Values{"csrf": {carol.csrf()}}, e.URL, nil)
	if status != http.StatusForbidden || !strings.Contains(page, "may not decide requests for role editor") {
		t.Errorf("carol approving = %d:\n%s", status, page)
	}
	bob.get("/approvals")
	if !strings.Contains(bob.page, "req-"+reqs[0].ID) || strings.Contains(bob.page, ">Clusters<") {
		t.Fatalf("bob's queue lacks alice's request, or shows admin pages:\n%s", bob.page)
	}
	page = bob.submit("/approvals", "/approvals/"+reqs[0].ID+"/approve", url.Values{})
	if !strings.Contains(page, "was approved") {
		t.Errorf("after bob approves:\n%s", page)
	}
	alice.get("/approvals")
	if strings.Contains(alice.page, "req-"+reqs[0].ID) {
		t.Errorf("alice's own request is in her approvals queue:\n%s", alice.page)
	}
}

// TestAuditPageChainAndDetail: the audit page shows the last signed
// checkpoint before any verification, an event's detail, and reads a
// time range as a duration ago or an RFC 3339 time, naming a bad one.
func TestAuditPageChainAndDetail(t *testing.T) {
	e := newEnv(t)
	root, _ := e.signIn("root@example.com")
	e.waitAudit(proto.AuditClusterCreated, "root@example.com")
	var ck proto.AuditCheckpoint
	e.Do(e.admin.Token, "POST", proto.APIVersion+"/audit/checkpoints", nil, &ck)

	root.get("/admin/audit?code=" + string(proto.AuditClusterCreated))
	cp := regexp.MustCompile(`<p id="checkpoint">([^\n]*)</p>`).FindStringSubmatch(root.page)
	if cp == nil || !strings.Contains(cp[1], fmt.Sprintf("record %d,", ck.Seq)) || !strings.Contains(cp[1], ck.KeyID()) {
		t.Errorf("the chain section does not name the last checkpoint (record %d, key %s):\n%s", ck.Seq, ck.KeyID(), root.page)
	}
	if !strings.Contains(root.page, "Not verified on this page yet") {
		t.Errorf("the chain's state before verifying is not said:\n%s", root.page)
	}
	for _, want := range []string{"<dt>Time</dt>", "<dt>Actor</dt><dd>root@example.com</dd>", "<dt>Object</dt>", "<dt>Previous hash</dt>"} {
		if !strings.Contains(root.page, want) {
			t.Errorf("the event's detail lacks %s:\n%s", want, root.page)
		}
	}

	tests := []struct {
		from   string
		status int
		events bool
	}{
		{"2h", http.StatusOK, true},
		{"1d", http.StatusOK, true},
		{time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), http.StatusOK, true},
		{time.Now().Add(time.Hour).UTC().Format(time.RFC3339), http.StatusOK, false},
		{"yesterday", http.StatusBadRequest, false},
	}
	for _, tt := range tests {
		resp, _ := root.get("/admin/audit?code=" + string(proto.AuditClusterCreated) + "&from=" + url.QueryEscape(tt.from))
		if resp.StatusCode != tt.status || strings.Contains(root.page, "<details>") != tt.events {
			t.Errorf("from=%s: %d with events %v, want %d with %v:\n%s", tt.from, resp.StatusCode, strings.Contains(root.page, "<details>"), tt.status, tt.events, root.page)
		}
	}
	if !strings.Contains(root.page, `From &#34;yesterday&#34; is neither a duration ago`) {
		t.Errorf("a bad from is not named:\n%s", root.page)
	}
	// The live tail takes the range as read when the page loaded.
	root.get("/admin/audit?from=2h")
	tail := regexp.MustCompile(`data-live="([^"]*)"`).FindStringSubmatch(root.page)
	if tail == nil || !strings.Contains(tail[1], "from=20") || strings.Contains(tail[1], "from=2h") {
		t.Errorf("the live tail's range = %v, want the time 2h ago", tail)
	}
}
