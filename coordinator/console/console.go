// Package console is the coordinator's web console: server-rendered pages
// (html/template, embedded with the binary) for people who approve,
// audit and revoke, served on the coordinator's own origin at "/" beside
// the API under /api/v1.
//
// The console holds no state and no authority of its own. A browser
// session is a coordinator session of kind proto.SessionConsole, carried
// in an HttpOnly cookie; every page is built from the coordinator's API,
// called in process with that session as the bearer token, so the API's
// authorization (who is an administrator, who may approve what) is the
// console's. Sign-in is the coordinator's OIDC login, bound to the
// browser that started it by a PKCE verifier the console keeps in a
// short-lived HttpOnly cookie.
//
// Every state-changing request is a POST that must come from the
// console's own origin (Origin, and Sec-Fetch-Site when sent) and carry
// the session's CSRF token, which is derived from the session cookie.
// Every answer carries a Content-Security-Policy that allows only the
// console's own scripts and styles, and refuses framing.
package console

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/pkg/webstyle"
	"github.com/clustral/clustral/proto"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Paths the coordinator needs to know.
const (
	// SignInDonePath is where the coordinator's OIDC callback sends the
	// browser back with the one-time code of a console sign-in.
	SignInDonePath = "/signin/done"
)

// Cookie names.
const (
	sessionCookie = "clustral_console"
	signInCookie  = "clustral_signin"
)

// Config is what a Console needs from its coordinator.
type Config struct {
	// PublicURL is the coordinator's URL as browsers reach it; the
	// console's origin. Cookies are Secure when it is https.
	PublicURL string
	// API is the coordinator's API handler, called in process.
	API http.Handler
	// SignIn starts an OIDC sign-in bound to the S256 challenge whose
	// answer comes back to redirect, for a browser at source; it returns
	// the identity provider's URL.
	SignIn func(challenge, redirect, source string) (authURL string, err error)
	// Exchange redeems the code of a sign-in with its verifier for a
	// browser session.
	Exchange func(code, verifier string) (*proto.Session, error)
	// SignInTTL is how long a started sign-in may take.
	SignInTTL time.Duration
	// Done, when closed, ends every open event stream: the coordinator
	// closes it when it stops serving.
	Done <-chan struct{}
	// PerSource, if not nil, wraps the routes that need no session with
	// the coordinator's per-source rate limit, under the name route.
	PerSource func(route string, h http.HandlerFunc) http.HandlerFunc
	Logger    *slog.Logger
}

// Console serves the web console. It is safe for concurrent use; it owns
// no goroutines beyond the requests it serves.
type Console struct {
	cfg    Config
	origin string
	secure bool
	pages  map[string]*template.Template
	static http.Handler
	log    *slog.Logger
}

// New returns the console for cfg. It panics if the embedded templates do
// not parse, which a test catches.
func New(cfg Config) *Console {
	c := &Console{cfg: cfg, secure: strings.HasPrefix(cfg.PublicURL, "https://"), log: cfg.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if u, err := url.Parse(cfg.PublicURL); err == nil {
		c.origin = Origin(u)
	}
	c.pages = parsePages()
	sub, err := fs.Sub(staticFS, "static")
	if err != nil {
		panic(err)
	}
	c.static = http.StripPrefix("/static/", http.FileServerFS(sub))
	return c
}

// Route is one of the console's routes: its method and pattern, and who
// may use it.
type Route struct {
	Method, Pattern string
	Access          Access
	handle          func(c *Console, w http.ResponseWriter, r *http.Request, v *visit)
}

// Access says who may use a route.
type Access int

const (
	Public Access = iota // anyone
	User                 // a signed-in user
	Admin                // a signed-in administrator
)

// Routes lists every route of the console, so tests cover each one.
func Routes() []Route {
	return []Route{
		{"GET", "/signin", Public, (*Console).signInPage},
		{"GET", "/signin/start", Public, (*Console).signInStart},
		{"GET", SignInDonePath, Public, (*Console).signInDone},
		{"POST", "/signout", User, (*Console).signOut},

		{"GET", "/{$}", User, (*Console).accessPage},
		{"GET", "/connect", User, (*Console).connectPage},
		{"GET", "/requests", User, (*Console).requestsPage},
		{"POST", "/requests", User, (*Console).createRequest},
		{"POST", "/requests/{id}/cancel", User, (*Console).cancelRequest},
		{"GET", "/devices", User, (*Console).devicesPage},
		{"POST", "/devices/{id}/revoke", User, (*Console).revokeDevice},
		{"POST", "/sessions/{id}/end", User, (*Console).endSession},

		{"GET", "/approvals", User, (*Console).queuePage},
		{"GET", "/approvals/events", User, (*Console).queueEvents},
		{"POST", "/approvals/{id}/approve", User, (*Console).approveRequest},
		{"POST", "/approvals/{id}/deny", User, (*Console).denyRequest},
		{"GET", "/admin/clusters", Admin, (*Console).clustersPage},
		{"POST", "/admin/clusters", Admin, (*Console).createCluster},
		{"POST", "/admin/clusters/{cluster}/{action}", Admin, (*Console).clusterToken},
		{"GET", "/admin/users", Admin, (*Console).usersPage},
		{"POST", "/admin/users/{user}/{action}", Admin, (*Console).userState},
		{"GET", "/admin/users/{user}", Admin, (*Console).userPage},
		{"POST", "/admin/users/{user}/devices/{id}/revoke", Admin, (*Console).revokeUserDevice},
		{"GET", "/admin/roles", Admin, (*Console).rolesPage},
		{"GET", "/admin/roles/new", Admin, (*Console).newRolePage},
		{"POST", "/admin/roles/new", Admin, (*Console).createRole},
		{"GET", "/admin/roles/{role}/edit", Admin, (*Console).editRolePage},
		{"POST", "/admin/roles/{role}/edit", Admin, (*Console).updateRole},
		{"GET", "/admin/assignments", Admin, (*Console).assignmentsPage},
		{"POST", "/admin/assignments", Admin, (*Console).createAssignment},
		{"POST", "/admin/assignments/{id}/delete", Admin, (*Console).deleteAssignment},
		{"GET", "/admin/audit", Admin, (*Console).auditPage},
		{"GET", "/admin/audit/events", Admin, (*Console).auditTail},
		{"POST", "/admin/audit/verify", Admin, (*Console).verifyAudit},
		{"GET", "/admin/live", Admin, (*Console).livePage},
		{"GET", "/admin/live/events", Admin, (*Console).liveEvents},
		{"POST", "/admin/live/{id}/end", Admin, (*Console).endLive},
		{"GET", "/admin/sessions", Admin, (*Console).recordingsPage},
		{"GET", "/admin/sessions/{id}", Admin, (*Console).recordingPage},
		{"GET", "/admin/sessions/{id}/cast", Admin, (*Console).recordingCast},
		{"GET", "/admin/sessions/{id}/live", Admin, (*Console).recordingLivePage},
	}
}

// Register adds the console's routes to mux.
func (c *Console) Register(mux *http.ServeMux) {
	mux.Handle("GET /static/", c.withHeaders(c.static))
	mux.Handle("GET /static/console.css", c.withHeaders(http.StripPrefix("/static/", http.FileServerFS(webstyle.FS))))
	for _, rt := range Routes() {
		h := c.guard(rt)
		if rt.Access == Public && c.cfg.PerSource != nil {
			h = c.cfg.PerSource("console"+rt.Pattern, h)
		}
		mux.Handle(rt.Method+" "+rt.Pattern, c.withHeaders(h))
	}
}

// csp allows the console's own scripts, styles and event stream, nothing
// inline and no framing.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// withHeaders sets the security headers every answer of the console has.
func (c *Console) withHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", csp)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		// same-origin, not no-referrer: under no-referrer a browser sends
		// "Origin: null" with a form's POST, and the origin check needs
		// the real one. Nothing leaves the console's origin either way.
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		if strings.HasPrefix(r.URL.Path, "/static/") {
			hd.Set("Cache-Control", "no-cache")
		} else {
			hd.Set("Cache-Control", "no-store")
		}
		h.ServeHTTP(w, r)
	})
}

// visit is one request of a signed-in user: their session token, who
// they are, and the API as them.
type visit struct {
	token string
	who   proto.Whoami
	api   *coordclient.Client
	csrf  string
}

// guard checks a route's access and, for a POST, that it came from the
// console's origin with the session's CSRF token, then serves it.
func (c *Console) guard(rt Route) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if rt.Method == http.MethodPost && !c.sameOrigin(r) {
			c.fail(w, r, nil, http.StatusForbidden, "This form was sent from another site, so it was refused. Open the console at "+c.cfg.PublicURL+" and try again.")
			return
		}
		if rt.Access == Public {
			rt.handle(c, w, r, nil)
			return
		}
		v, ok := c.signedIn(w, r)
		if !ok {
			return
		}
		if rt.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
			if err := r.ParseForm(); err != nil {
				c.fail(w, r, v, http.StatusBadRequest, "The form could not be read ("+err.Error()+"). Reload the page and try again.")
				return
			}
			if subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(v.csrf)) != 1 {
				c.fail(w, r, v, http.StatusForbidden, "This form is out of date or was not sent by this console, so it was refused. Reload the page and try again.")
				return
			}
		}
		if rt.Access == Admin && !v.who.User.Admin {
			c.fail(w, r, v, http.StatusForbidden, v.who.User.Login+" is not an administrator, so this page is not theirs to see. Ask an administrator; they are named in the coordinator's configuration.")
			return
		}
		rt.handle(c, w, r, v)
	}
}

// signedIn returns the visit of the request's browser session. Without a
// live session it sends a page request to the sign-in page and refuses
// anything else, and returns false.
func (c *Console) signedIn(w http.ResponseWriter, r *http.Request) (*visit, bool) {
	ck, err := r.Cookie(sessionCookie)
	if err == nil && ck.Value != "" {
		v := &visit{token: ck.Value, api: c.apiAs(r, ck.Value), csrf: csrfToken(ck.Value)}
		err = v.api.Do(r.Context(), "GET", proto.APIVersion+"/whoami", nil, &v.who)
		if err == nil {
			return v, true
		}
		var pe *coordclient.Error
		if !errors.As(err, &pe) || pe.Status != http.StatusUnauthorized && pe.Status != http.StatusForbidden {
			c.fail(w, r, nil, http.StatusBadGateway, sentence(err))
			return nil, false
		}
		c.clearSession(w)
	}
	if r.Method == http.MethodGet && r.Header.Get("Accept") != "text/event-stream" {
		http.Redirect(w, r, "/signin", http.StatusSeeOther)
		return nil, false
	}
	c.fail(w, r, nil, http.StatusUnauthorized, "You are not signed in, or your session ended. Sign in again at "+c.cfg.PublicURL+"/signin.")
	return nil, false
}

// csrfToken is the CSRF token of the session whose cookie holds token:
// only a page that the session's own browser loaded knows it, and it
// needs no state, so it holds across coordinator restarts and replicas.
func csrfToken(token string) string {
	h := sha256.Sum256([]byte("clustral console csrf\x00" + token))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// sameOrigin reports whether a POST came from a page of the console: its
// Origin is the console's, and Sec-Fetch-Site, when the browser sends it,
// says same-origin. A POST without Origin is refused: every browser the
// console supports sends it.
func (c *Console) sameOrigin(r *http.Request) bool {
	if sfs := r.Header.Get("Sec-Fetch-Site"); sfs != "" && sfs != "same-origin" {
		return false
	}
	o, err := url.Parse(r.Header.Get("Origin"))
	return err == nil && o.Host != "" && c.origin != "" && Origin(o) == c.origin
}

// Origin is u's scheme, host and port, the port made explicit, in lower
// case: two URLs are the same origin when their Origins are equal.
func Origin(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[strings.ToLower(u.Scheme)]
	}
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(net.JoinHostPort(u.Hostname(), port))
}

// ---- the API, in process ----

// apiAs is the coordinator's API as the holder of token, for the browser
// of r.
func (c *Console) apiAs(r *http.Request, token string) *coordclient.Client {
	return coordclient.New("http://console.invalid", token, &http.Client{Transport: inProcess{h: c.cfg.API, remote: r.RemoteAddr}})
}

// inProcess is an http.RoundTripper that serves each request with the
// handler h in the calling goroutine, as if it came from remote.
type inProcess struct {
	h      http.Handler
	remote string
}

func (t inProcess) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body == nil {
		req.Body = http.NoBody
	}
	req.RemoteAddr = t.remote
	req.RequestURI = req.URL.RequestURI()
	rec := &recorder{header: http.Header{}, status: http.StatusOK}
	t.h.ServeHTTP(rec, req)
	return &http.Response{Status: http.StatusText(rec.status), StatusCode: rec.status, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: rec.header, Body: io.NopCloser(&rec.body), ContentLength: int64(rec.body.Len()), Request: req}, nil
}

// recorder is the http.ResponseWriter of an in-process call.
type recorder struct {
	header http.Header
	status int
	wrote  bool
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(status int) {
	if !r.wrote {
		r.status, r.wrote = status, true
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.body.Write(b)
}

// sentence is err as one line for a person: the coordinator's title,
// detail and hint, never a stack or a code.
func sentence(err error) string {
	var pe *coordclient.Error
	if !errors.As(err, &pe) {
		return "The coordinator could not answer: " + err.Error() + "."
	}
	s := capitalize(pe.Title)
	if pe.Detail != "" {
		s += ": " + pe.Detail
	}
	s = strings.TrimRight(s, ".") + "."
	if pe.Hint != "" {
		s += " " + capitalize(strings.TrimRight(pe.Hint, ".")) + "."
	}
	return s
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// ---- sign-in ----

func (c *Console) signInPage(w http.ResponseWriter, r *http.Request, _ *visit) {
	c.render(w, http.StatusOK, "signin", c.page(r, nil, "Sign in"))
}

// signInStart starts a sign-in bound to this browser: the verifier stays
// in an HttpOnly cookie that only the sign-in's return path receives.
func (c *Console) signInStart(w http.ResponseWriter, r *http.Request, _ *visit) {
	verifier := oauth2.GenerateVerifier()
	source := r.RemoteAddr
	if h, _, err := net.SplitHostPort(source); err == nil {
		source = h
	}
	authURL, err := c.cfg.SignIn(oauth2.S256ChallengeFromVerifier(verifier), strings.TrimRight(c.cfg.PublicURL, "/")+SignInDonePath, source)
	if err != nil {
		c.log.Warn("console sign-in not started", "err", err)
		d := c.page(r, nil, "Sign in")
		d.Error = "Signing in could not start: " + err.Error() + "."
		c.render(w, http.StatusServiceUnavailable, "signin", d)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: signInCookie, Value: verifier, Path: SignInDonePath, MaxAge: int(c.cfg.SignInTTL.Seconds()),
		HttpOnly: true, Secure: c.secure, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, authURL, http.StatusSeeOther)
}

// signInDone takes the browser back from the identity provider with a
// one-time code, which only this browser's verifier redeems.
func (c *Console) signInDone(w http.ResponseWriter, r *http.Request, _ *visit) {
	http.SetCookie(w, &http.Cookie{Name: signInCookie, Path: SignInDonePath, MaxAge: -1, HttpOnly: true, Secure: c.secure, SameSite: http.SameSiteLaxMode})
	q := r.URL.Query()
	d := c.page(r, nil, "Sign in")
	if desc := q.Get("error_description"); q.Get("error") != "" {
		d.Error = "Signing in failed: " + strings.TrimRight(cmp.Or(desc, q.Get("error")), ".") + "."
		c.render(w, http.StatusUnauthorized, "signin", d)
		return
	}
	ck, err := r.Cookie(signInCookie)
	if err != nil || ck.Value == "" || q.Get("code") == "" {
		if code := q.Get("code"); code != "" {
			// Spend the code: a sign-in that reached the wrong browser
			// ends here, and the coordinator audits it as unbound.
			c.cfg.Exchange(code, "")
		}
		d.Error = "This sign-in was not started in this browser, or it took too long. Sign in again from this page."
		c.render(w, http.StatusUnauthorized, "signin", d)
		return
	}
	sess, err := c.cfg.Exchange(q.Get("code"), ck.Value)
	if err != nil {
		d.Error = "Signing in failed: " + strings.TrimRight(err.Error(), ".") + ". Sign in again from this page."
		c.render(w, http.StatusUnauthorized, "signin", d)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: sess.Token, Path: "/", Expires: sess.ExpiresAt,
		HttpOnly: true, Secure: c.secure, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (c *Console) clearSession(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Path: "/", MaxAge: -1, HttpOnly: true, Secure: c.secure, SameSite: http.SameSiteLaxMode})
}

// signOut ends the browser session at the coordinator and forgets it.
func (c *Console) signOut(w http.ResponseWriter, r *http.Request, v *visit) {
	if err := v.api.Do(r.Context(), "DELETE", proto.APIVersion+"/session", nil, nil); err != nil {
		c.fail(w, r, v, http.StatusBadGateway, sentence(err))
		return
	}
	c.clearSession(w)
	http.Redirect(w, r, "/signin", http.StatusSeeOther)
}

// ---- rendering ----

// pageData is what every page's template gets.
type pageData struct {
	Title  string
	Nav    string
	User   *proto.User
	CSRF   string
	Error  string
	Notice string
	Data   any
}

// Current reports whether the page is at href or under it, so the
// header marks the link (or the menu) of the section the page is in:
// /admin/roles/oncall/edit is under /admin/roles and under /admin. The
// root, "/", is current only on itself.
func (d *pageData) Current(href string) bool {
	if href == "/" {
		return d.Nav == "/"
	}
	return d.Nav == href || strings.HasPrefix(d.Nav, href+"/")
}

func (c *Console) page(r *http.Request, v *visit, title string) *pageData {
	d := &pageData{Title: title, Nav: r.URL.Path}
	if v != nil {
		d.User, d.CSRF = &v.who.User, v.csrf
		d.Notice = notices[r.URL.Query().Get("done")]
	}
	return d
}

// notices are the sentences a page shows after a change; a redirect
// names one by its key, so no text travels in the URL.
var notices = map[string]string{
	"requested":     "Your request was sent to the approvers. It shows below until they decide.",
	"cancelled":     "The request was withdrawn.",
	"revoked":       "The device was revoked; it is off the mesh now.",
	"ended":         "The session was ended, with every device under it.",
	"approved":      "The request was approved; the grant applies now.",
	"denied":        "The request was denied.",
	"token-revoked": "The join token was revoked; the cluster's agents left the mesh. Rotate it to issue a new one.",
	"disabled":      "The user was disabled; their devices left the mesh and their open streams were cut.",
	"enabled":       "The user was enabled; they can sign in again.",
	"assigned":      "The role was assigned; it applies now.",
	"unassigned":    "The assignment was removed; the access it gave ends now.",
	"role-saved":    "The role was saved; it applies at once to whoever holds it.",
	"live-ended":    "The session was ended; its agent cut it, and the user's client saw it end.",
}

// render writes the page name with d.
func (c *Console) render(w http.ResponseWriter, status int, name string, d *pageData) {
	var buf bytes.Buffer
	if err := c.pages[name].ExecuteTemplate(&buf, "layout", d); err != nil {
		c.log.Error("render console page", "page", name, "err", err)
		http.Error(w, "The page could not be shown; the coordinator's log has the details.", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// fail shows the sentence msg on the error page.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, v *visit, status int, msg string) {
	d := c.page(r, v, http.StatusText(status))
	d.Error = msg
	c.render(w, status, "error", d)
}

// failAPI shows the API's refusal err on the error page, with its status.
func (c *Console) failAPI(w http.ResponseWriter, r *http.Request, v *visit, err error) {
	c.fail(w, r, v, statusOf(err), sentence(err))
}

var funcs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
	"iso":       func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"cmdline":   commandLine,
	"agentPath": agentPath,
	"dur":       human,
	// shorter reports whether d is shorter than asked.
	"shorter": func(d time.Duration, asked proto.Duration) bool { return d < time.Duration(asked) },
	"deref": func(t *time.Time) time.Time {
		if t == nil {
			return time.Time{}
		}
		return *t
	},
}

// human writes a duration as people do: 30m, 1h, 2h30m, 1d.
func human(d any) string {
	var x time.Duration
	switch v := d.(type) {
	case time.Duration:
		x = v
	case proto.Duration:
		x = time.Duration(v)
	default:
		return fmt.Sprint(d)
	}
	if x%(24*time.Hour) == 0 && x > 0 {
		return fmt.Sprintf("%dd", x/(24*time.Hour))
	}
	s := strings.TrimSuffix(x.Round(time.Second).String(), "0s")
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return cmp.Or(s, "0s")
}

// parsePages parses each page with the layout.
func parsePages() map[string]*template.Template {
	layout := template.Must(template.New("").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/partials.html"))
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		panic(err)
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" || base == "partials" {
			continue
		}
		pages[base] = template.Must(template.Must(layout.Clone()).ParseFS(templateFS, n))
	}
	return pages
}

// apiCall is v.api.Do with the request's context.
func apiCall(r *http.Request, v *visit, method, path string, body, out any) error {
	return v.api.Do(r.Context(), method, path, body, out)
}
