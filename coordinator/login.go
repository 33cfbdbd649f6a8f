package coordinator

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// An interactive login is bound to the machine that started it. The CLI
// sends the S256 challenge of a verifier it keeps; a session is handed out
// only against that verifier, and only after the browser proved it is on
// that machine (the default flow: the coordinator sends the browser to the
// CLI's loopback listener with a one-time code) or the person confirmed,
// in the browser, the code the terminal shows (headless). The auth URL and
// the poll handle alone are worth nothing: whoever signs in through a URL
// someone else started gives that someone nothing.

// DefaultMaxPendingLogins is the default of Config.MaxPendingLogins.
const DefaultMaxPendingLogins = 10000

// maxConfirmAttempts is how many wrong codes a confirmation page takes
// before the login is ended.
const maxConfirmAttempts = 5

// confirmCookie carries the secret that ties a confirmation page to the
// browser that came back from the identity provider.
const confirmCookie = "clustral_login"

// loginPhase is how far a pending login got.
type loginPhase int

const (
	loginStarted       loginPhase = iota // waiting for the browser
	loginAuthenticated                   // the IdP came back; not yet bound to the device
	loginConfirmed                       // headless: the person confirmed the code
)

// pendingLogin is a login started by a CLI and not yet finished. It lives
// in a loginTable, and on a shared store in the store too (loginshare.go).
type pendingLogin struct {
	handle    string // hash of the poll handle
	state     string // OAuth state toward the IdP
	nonce     string
	pkce      string // the coordinator's own verifier toward the IdP
	challenge string // the CLI's S256 challenge
	redirect  string // the CLI's loopback URI; empty for headless
	console   bool   // a web console's sign-in: redirect is the console's
	userCode  string // headless: what the terminal shows
	device    proto.LoginDevice
	source    string // address login/start came from
	started   time.Time
	expires   time.Time

	phase      loginPhase
	stateUsed  bool          // the browser came back once (the state is spent)
	idt        *oidc.IDToken // set once the browser came back, on the replica it came back to
	rawIDToken string        // shared store: the ID token, verified again by another replica
	who        string        // the login claim of whoever signed in
	code       string        // loopback: hash of the one-time code
	confirm    string        // headless: hash of the confirmation cookie
	csrf       string        // headless: the confirmation form's token
	attempts   int           // headless: wrong codes typed
	failure    string
}

// loginTable holds the pending logins under its own lock, so that logins
// never wait on the server's lock and its sweep does not hold it. The
// maps index the same logins by the hash of each secret that names one.
type loginTable struct {
	mu        sync.Mutex
	byHandle  map[string]*pendingLogin
	byState   map[string]*pendingLogin // OAuth state (not hashed: it travels in URLs anyway)
	byCode    map[string]*pendingLogin
	byConfirm map[string]*pendingLogin
}

func newLoginTable() *loginTable {
	return &loginTable{
		byHandle:  map[string]*pendingLogin{},
		byState:   map[string]*pendingLogin{},
		byCode:    map[string]*pendingLogin{},
		byConfirm: map[string]*pendingLogin{},
	}
}

// removeLocked forgets pl under every name. Called with t.mu held.
func (t *loginTable) removeLocked(pl *pendingLogin) {
	delete(t.byHandle, pl.handle)
	delete(t.byState, pl.state)
	if pl.code != "" {
		delete(t.byCode, pl.code)
	}
	if pl.confirm != "" {
		delete(t.byConfirm, pl.confirm)
	}
}

// len reports how many logins are pending.
func (t *loginTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byHandle)
}

var errNoOIDC = errors.New("this coordinator has no OIDC provider configured")

// loginProblem is a typed refusal of a login step.
func loginProblem(status int, code proto.ErrorCode, title, hint string) *proto.Problem {
	return &proto.Problem{Status: status, Code: code, Title: title, Hint: hint}
}

// checkLoopbackRedirect accepts only http://127.0.0.1:PORT/... and
// http://[::1]:PORT/... (RFC 8252 §7.3): an address on the machine the
// browser runs on, never a name a resolver could point elsewhere.
func checkLoopbackRedirect(raw string) error {
	shown := raw
	if len(shown) > 100 {
		shown = shown[:100] + "..."
	}
	const fix = "the CLI must listen on http://127.0.0.1:PORT/ or http://[::1]:PORT/; update clustral"
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("redirect_uri %q is not a URL (%s)", shown, fix)
	}
	if u.Scheme != "http" || u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return fmt.Errorf("redirect_uri %q must be a plain http:// loopback URL without user, query or fragment (%s)", shown, fix)
	}
	ip, err := netip.ParseAddr(u.Hostname())
	if err != nil || (ip != netip.MustParseAddr("127.0.0.1") && ip != netip.IPv6Loopback()) {
		return fmt.Errorf("redirect_uri %q is not on 127.0.0.1 or [::1]; only a loopback address is accepted (%s)", shown, fix)
	}
	p, err := strconv.Atoi(u.Port())
	if err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("redirect_uri %q has no valid port (%s)", shown, fix)
	}
	return nil
}

// validVerifier reports whether v is an RFC 7636 code verifier: 43 to 128
// characters of [A-Za-z0-9-._~].
func validVerifier(v string) bool {
	if len(v) < 43 || len(v) > 128 {
		return false
	}
	for _, c := range []byte(v) {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~') {
			return false
		}
	}
	return true
}

// verifierMatches reports whether verifier is the one behind challenge.
func verifierMatches(challenge, verifier string) bool {
	if !validVerifier(verifier) {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(oauth2.S256ChallengeFromVerifier(verifier)), []byte(challenge)) == 1
}

// userCodeAlphabet has no vowels (no words) and no look-alikes (RFC 8628
// §6.1); eight of them carry about 34.6 bits.
const userCodeAlphabet = "BCDFGHJKLMNPQRSTVWXZ"

func newUserCode() string {
	var b strings.Builder
	for i := range 8 {
		if i == 4 {
			b.WriteByte('-')
		}
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(userCodeAlphabet))))
		if err != nil {
			panic(err) // crypto/rand does not fail
		}
		b.WriteByte(userCodeAlphabet[n.Int64()])
	}
	return b.String()
}

// normalizeUserCode drops what people add when typing a code (spaces,
// dashes, lower case).
func normalizeUserCode(s string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(s) {
		if r >= 'A' && r <= 'Z' {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// cleanDeviceText makes a device's self-description safe to show: printable
// runes only, at most max of them.
func cleanDeviceText(s string, max int) string {
	var b strings.Builder
	n := 0
	for _, r := range strings.TrimSpace(s) {
		if n == max {
			b.WriteString("…")
			break
		}
		if !unicode.IsPrint(r) {
			r = '?'
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

// remoteHost is the address part of r.RemoteAddr.
func remoteHost(r *http.Request) string {
	if h, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return h
	}
	return r.RemoteAddr
}

// checkLoginStart refuses a login/start request that could not be bound
// to its CLI, with the fix.
func checkLoginStart(req proto.LoginStartRequest) *proto.Problem {
	if req.CodeChallenge == "" {
		return loginProblem(http.StatusBadRequest, proto.CodeBadRequest,
			"code_challenge is required: this coordinator binds every login to the CLI that started it", "update clustral to the coordinator's version")
	}
	if req.CodeChallengeMethod != proto.CodeChallengeS256 {
		return loginProblem(http.StatusBadRequest, proto.CodeBadRequest,
			"code_challenge_method must be S256", "update clustral to the coordinator's version")
	}
	if len(req.CodeChallenge) != 43 || !validVerifier(req.CodeChallenge) {
		return loginProblem(http.StatusBadRequest, proto.CodeBadRequest,
			"code_challenge must be the 43-character BASE64URL(SHA-256(verifier))", "update clustral to the coordinator's version")
	}
	if req.RedirectURI != "" {
		if err := checkLoopbackRedirect(req.RedirectURI); err != nil {
			return loginProblem(http.StatusBadRequest, proto.CodeBadRequest, err.Error(), "or use clustral login --no-browser")
		}
	}
	return nil
}

// startLogin registers a pending login for req, which came from source.
func (s *Server) startLogin(req proto.LoginStartRequest, source string) (proto.LoginStartResponse, *proto.Problem) {
	if s.oidc == nil {
		return proto.LoginStartResponse{}, loginProblem(http.StatusServiceUnavailable, proto.CodeLoginFailed, errNoOIDC.Error(), "configure --oidc-issuer on the coordinator")
	}
	if p := checkLoginStart(req); p != nil {
		return proto.LoginStartResponse{}, p
	}
	return s.addLogin(req, source, false)
}

// consoleSignIn starts the web console's sign-in for the browser at
// source, bound to the S256 challenge of a verifier the console keeps in
// that browser: the identity provider's answer comes back to the
// console's redirect, and only that verifier redeems its code (exchange),
// so a sign-in completes only in the browser that started it.
func (s *Server) consoleSignIn(challenge, redirect, source string) (string, error) {
	if s.oidc == nil {
		return "", errNoOIDC
	}
	resp, p := s.addLogin(proto.LoginStartRequest{CodeChallenge: challenge, CodeChallengeMethod: proto.CodeChallengeS256,
		RedirectURI: redirect, Device: proto.LoginDevice{Hostname: "web console", OS: "browser"}}, source, true)
	if p != nil {
		return "", p
	}
	return resp.AuthURL, nil
}

// consoleExchange redeems the code the identity provider's answer brought
// to the console, with the verifier the browser kept.
func (s *Server) consoleExchange(code, verifier string) (*proto.Session, error) {
	sess, p := s.exchange(code, verifier)
	if p != nil {
		return nil, p
	}
	return sess, nil
}

// addLogin registers a checked pending login.
func (s *Server) addLogin(req proto.LoginStartRequest, source string, console bool) (proto.LoginStartResponse, *proto.Problem) {
	now := s.now()
	handle := newSecret("lh_")
	pl := &pendingLogin{
		handle:    hashSecret(handle),
		state:     newSecret(""),
		nonce:     newSecret(""),
		pkce:      oauth2.GenerateVerifier(),
		challenge: req.CodeChallenge,
		redirect:  req.RedirectURI,
		console:   console,
		device: proto.LoginDevice{
			Hostname: cleanDeviceText(req.Device.Hostname, 64),
			OS:       cleanDeviceText(req.Device.OS, 32),
		},
		source:  source,
		started: now,
		expires: now.Add(s.cfg.LoginTTL),
	}
	if pl.redirect == "" {
		pl.userCode = newUserCode()
	}
	t := s.logins
	t.mu.Lock()
	if len(t.byHandle) >= s.cfg.MaxPendingLogins {
		t.mu.Unlock()
		return proto.LoginStartResponse{}, loginProblem(http.StatusServiceUnavailable, proto.CodeTooManyLogins,
			fmt.Sprintf("the coordinator has %d logins waiting for a browser, its limit", s.cfg.MaxPendingLogins),
			"try again in a minute; unfinished logins expire after "+s.cfg.LoginTTL.String())
	}
	t.byHandle[pl.handle] = pl
	t.byState[pl.state] = pl
	t.mu.Unlock()
	if err := s.shareLogin(pl); err != nil {
		t.mu.Lock()
		t.removeLocked(pl)
		t.mu.Unlock()
		s.log.Error("start login", "err", err)
		return proto.LoginStartResponse{}, loginProblem(http.StatusServiceUnavailable, proto.CodeInternal, "login start: internal error (see the coordinator's log)", "try again in a moment")
	}
	authURL := s.oidc.oauth.AuthCodeURL(pl.state, oidc.Nonce(pl.nonce), oauth2.S256ChallengeOption(pl.pkce))
	return proto.LoginStartResponse{AuthURL: authURL, Handle: handle, ExpiresAt: pl.expires,
		PollInterval: proto.Duration(time.Second), UserCode: pl.userCode}, nil
}

// callback takes the browser's return from the identity provider: it
// verifies the ID token and makes the login wait to be bound to its
// device. It returns the login (nil if the state is unknown) and, on
// success, the one-time loopback code or the confirmation secret to hand
// the browser.
func (s *Server) callback(ctx context.Context, state, code, idpErr string) (pl *pendingLogin, secret string, err error) {
	t := s.logins
	s.findLogin("", func(t *loginTable) bool { return t.byState[state] != nil },
		func(sl *storedLogin) bool { return sl.State == state && !sl.StateUsed })
	t.mu.Lock()
	pl = t.byState[state]
	if pl != nil {
		delete(t.byState, state) // a state is good for one callback
		pl.stateUsed = true
	}
	t.mu.Unlock()
	if pl != nil {
		// And across replicas: the store decides which callback takes it.
		err := s.claimLogin(pl.handle, false, func(sl *storedLogin) bool {
			if sl.StateUsed || sl.State != state {
				return false
			}
			sl.StateUsed = true
			return true
		})
		if err != nil {
			if !errors.Is(err, errLoginTaken) {
				s.log.Error("claim a shared login's callback", "err", err)
			}
			pl = nil
		}
	}
	if pl == nil {
		return nil, "", errors.New("unknown or already used login; start again with clustral login")
	}
	if !s.now().Before(pl.expires) {
		return pl, "", errors.New("this login expired; start again with clustral login")
	}
	fail := func(err error) (*pendingLogin, string, error) {
		t.mu.Lock()
		pl.failure = err.Error()
		t.mu.Unlock()
		if serr := s.shareLogin(pl); serr != nil {
			s.log.Error("share a failed login", "err", serr)
		}
		return pl, "", err
	}
	if idpErr != "" {
		return fail(fmt.Errorf("the identity provider refused the login: %s", idpErr))
	}
	tok, err := s.oidc.oauth.Exchange(s.oidc.ctx(ctx), code, oauth2.VerifierOption(pl.pkce))
	if err != nil {
		return fail(fmt.Errorf("exchange authorization code: %w", err))
	}
	raw, ok := tok.Extra("id_token").(string)
	if !ok {
		return fail(errors.New("the identity provider returned no ID token"))
	}
	idt, err := s.oidc.verifier.Verify(s.oidc.ctx(ctx), raw)
	if err != nil {
		return fail(fmt.Errorf("verify ID token: %w", err))
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(pl.nonce)) != 1 {
		return fail(errors.New("ID token nonce does not match this login"))
	}
	c, err := s.oidc.claims(idt)
	if err != nil {
		return fail(err)
	}
	who := c.Login
	secret = newSecret("")
	t.mu.Lock()
	cur := t.byHandle[pl.handle]
	if pl.failure != "" || cur == nil || cur.failure != "" {
		t.mu.Unlock()
		return pl, "", errors.New("this login ended while you signed in; start again with clustral login")
	}
	if cur != pl {
		// Another replica's earlier change of this login was mirrored
		// meanwhile (applyLoginLocked); this callback's state is newer.
		t.removeLocked(cur)
		t.byHandle[pl.handle] = pl
	}
	pl.phase, pl.idt, pl.who = loginAuthenticated, idt, who
	if s.feed != nil {
		pl.rawIDToken = raw
	}
	if pl.redirect != "" {
		pl.code = hashSecret(secret)
		t.byCode[pl.code] = pl
	} else {
		pl.confirm = hashSecret(secret)
		pl.csrf = newSecret("")
		t.byConfirm[pl.confirm] = pl
	}
	t.mu.Unlock()
	if err := s.shareLogin(pl); err != nil {
		s.log.Error("share a signed-in login", "err", err)
		return pl, "", errors.New("this login could not be recorded; start again with clustral login")
	}
	return pl, secret, nil
}

// unbound audits a login that was signed in at the identity provider but
// not bound to the device that started it, so it issued no session.
func (s *Server) unbound(pl *pendingLogin, reason string) {
	who := pl.who
	if who == "" {
		who = "anonymous"
	}
	s.audit(proto.AuditEvent{Code: proto.AuditLoginUnbound, Actor: who, Outcome: proto.OutcomeDenied, Error: proto.CodeLoginFailed,
		Metadata: map[string]string{"reason": reason, "hostname": pl.device.Hostname, "os": pl.device.OS,
			"source": pl.source, "started": pl.started.UTC().Format(time.RFC3339)}})
	s.log.Warn("login not bound to its device", "login", pl.who, "reason", reason, "source", pl.source, "hostname", pl.device.Hostname)
}

// finish issues the session of a login bound to its device. pl is already
// out of the table.
func (s *Server) finish(pl *pendingLogin) (*proto.Session, *proto.Problem) {
	how := "browser"
	if pl.console {
		how = "console"
	}
	err := s.verifyStoredToken(pl)
	var sess *proto.Session
	if err == nil {
		sess, err = s.loginFromToken(pl.idt, how)
	}
	s.metrics.login(how, err)
	if err != nil {
		s.audit(proto.AuditEvent{Code: proto.AuditLoginFailed, Actor: pl.who, Outcome: proto.OutcomeFailure,
			Metadata: map[string]string{"reason": err.Error(), "source": pl.source}})
		return nil, loginProblem(http.StatusForbidden, proto.CodeLoginFailed, err.Error(), "")
	}
	return sess, nil
}

// wrongVerifier ends pl because a caller presented the wrong verifier: the
// handle or the code leaked, and the login is no longer trusted.
func (s *Server) wrongVerifier(pl *pendingLogin, where string) *proto.Problem {
	s.unbound(pl, "wrong code verifier at "+where)
	return loginProblem(http.StatusUnauthorized, proto.CodeLoginFailed,
		"the code verifier does not match this login; the login was ended", "run clustral login again on the machine that signs in")
}

// poll reports a login's progress to the CLI that started it. Only a
// headless login, confirmed in the browser, yields its session here,
// once, and only against the verifier.
func (s *Server) poll(handle, verifier string) (*proto.Session, *proto.Problem) {
	t := s.logins
	s.findLogin(hashSecret(handle), func(t *loginTable) bool { return t.byHandle[hashSecret(handle)] != nil },
		func(sl *storedLogin) bool { return sl.Handle == hashSecret(handle) })
	t.mu.Lock()
	pl := t.byHandle[hashSecret(handle)]
	switch {
	case pl == nil:
		t.mu.Unlock()
		return nil, loginProblem(http.StatusGone, proto.CodeLoginConsumed, "unknown, expired or already used login handle", "run clustral login again")
	case !verifierMatches(pl.challenge, verifier):
		t.removeLocked(pl)
		t.mu.Unlock()
		s.forgetLogin(pl.handle)
		return nil, s.wrongVerifier(pl, "poll")
	case pl.failure != "":
		t.removeLocked(pl)
		t.mu.Unlock()
		s.forgetLogin(pl.handle)
		return nil, &proto.Problem{Status: http.StatusUnauthorized, Code: proto.CodeLoginFailed, Title: "login failed", Detail: pl.failure, Hint: "run clustral login again"}
	case !s.now().Before(pl.expires):
		t.removeLocked(pl)
		t.mu.Unlock()
		if s.forgetLogin(pl.handle) && pl.phase == loginAuthenticated {
			s.unbound(pl, "expired before it was bound to the device that started it")
		}
		return nil, loginProblem(http.StatusGone, proto.CodeLoginExpired, "the login expired before it was completed", "run clustral login again")
	case pl.phase == loginConfirmed:
		t.removeLocked(pl)
		t.mu.Unlock()
		if err := s.claimLogin(pl.handle, true, func(sl *storedLogin) bool { return sl.Phase == loginConfirmed && sl.Failure == "" }); err != nil {
			return nil, loginProblem(http.StatusGone, proto.CodeLoginConsumed, "unknown, expired or already used login handle", "run clustral login again")
		}
		return s.finish(pl)
	}
	p := loginProblem(http.StatusAccepted, proto.CodeLoginPending, "waiting for the browser", "")
	if pl.phase == loginAuthenticated {
		if pl.redirect != "" {
			p.Detail = "signed in at the identity provider; waiting for the browser to come back to this machine"
		} else {
			// Not who signed in: whoever polls may be the one who sent
			// the link.
			p.Detail = "signed in at the identity provider; waiting for the code to be confirmed in the browser"
		}
	}
	t.mu.Unlock()
	return nil, p
}

// exchange trades the one-time code the browser brought to the CLI's
// loopback listener, with the login's verifier, for the session.
func (s *Server) exchange(code, verifier string) (*proto.Session, *proto.Problem) {
	t := s.logins
	s.findLogin("", func(t *loginTable) bool { return t.byCode[hashSecret(code)] != nil },
		func(sl *storedLogin) bool {
			return sl.Code == hashSecret(code) && sl.Phase == loginAuthenticated && sl.Failure == ""
		})
	t.mu.Lock()
	pl := t.byCode[hashSecret(code)]
	if pl == nil {
		t.mu.Unlock()
		return nil, loginProblem(http.StatusGone, proto.CodeLoginConsumed, "unknown or already used login code", "run clustral login again")
	}
	t.removeLocked(pl) // the code is good for one exchange, right or wrong
	t.mu.Unlock()
	if err := s.claimLogin(pl.handle, true, func(sl *storedLogin) bool {
		return sl.Phase == loginAuthenticated && sl.Code == pl.code && sl.Failure == ""
	}); err != nil {
		return nil, loginProblem(http.StatusGone, proto.CodeLoginConsumed, "unknown or already used login code", "run clustral login again")
	}
	if !verifierMatches(pl.challenge, verifier) {
		return nil, s.wrongVerifier(pl, "exchange")
	}
	if !s.now().Before(pl.expires) {
		s.unbound(pl, "expired before it was bound to the device that started it")
		return nil, loginProblem(http.StatusGone, proto.CodeLoginExpired, "the login expired before it was completed", "run clustral login again")
	}
	return s.finish(pl)
}

// confirmResult is what the confirmation page shows after a POST.
type confirmResult int

const (
	confirmAgain    confirmResult = iota // wrong code; the form again
	confirmDone                          // confirmed
	confirmDeclined                      // declined, or too many wrong codes
)

// confirm takes the headless confirmation form. secret is the cookie,
// csrf the form's token.
func (s *Server) confirm(secret, csrf, userCode string, decline bool) (*pendingLogin, confirmResult, error) {
	t := s.logins
	s.findLogin("", func(t *loginTable) bool { return t.byConfirm[hashSecret(secret)] != nil },
		func(sl *storedLogin) bool {
			return secret != "" && sl.Confirm == hashSecret(secret) && sl.Phase == loginAuthenticated && sl.Failure == ""
		})
	t.mu.Lock()
	pl := t.byConfirm[hashSecret(secret)]
	if pl == nil || secret == "" {
		t.mu.Unlock()
		return nil, confirmDeclined, errors.New("this confirmation page is no longer valid: the login ended, expired or was confirmed already; start again with clustral login --no-browser")
	}
	if subtle.ConstantTimeCompare([]byte(csrf), []byte(pl.csrf)) != 1 {
		t.mu.Unlock()
		return pl, confirmDeclined, errors.New("the form does not belong to this login; reload the page from the link your terminal showed")
	}
	if !s.now().Before(pl.expires) {
		t.removeLocked(pl)
		t.mu.Unlock()
		s.unbound(pl, "expired before it was confirmed")
		return pl, confirmDeclined, errors.New("this login expired; start again with clustral login --no-browser")
	}
	if pl.phase != loginAuthenticated {
		t.mu.Unlock()
		return pl, confirmDeclined, errors.New("this login was confirmed already")
	}
	if decline {
		pl.failure = "the login was declined in the browser"
		delete(t.byConfirm, pl.confirm)
		t.mu.Unlock()
		s.shareConfirm(pl)
		s.unbound(pl, "declined in the browser")
		return pl, confirmDeclined, nil
	}
	want := normalizeUserCode(pl.userCode)
	if subtle.ConstantTimeCompare([]byte(normalizeUserCode(userCode)), []byte(want)) != 1 {
		pl.attempts++
		if pl.attempts >= maxConfirmAttempts {
			pl.failure = fmt.Sprintf("the code was typed wrong %d times in the browser", pl.attempts)
			delete(t.byConfirm, pl.confirm)
			t.mu.Unlock()
			s.shareConfirm(pl)
			s.unbound(pl, "wrong code typed too often")
			return pl, confirmDeclined, fmt.Errorf("wrong code %d times: this login was ended; start again with clustral login --no-browser", maxConfirmAttempts)
		}
		left := maxConfirmAttempts - pl.attempts
		t.mu.Unlock()
		s.shareConfirm(pl)
		return pl, confirmAgain, fmt.Errorf("that is not the code your terminal shows (%d tries left)", left)
	}
	pl.phase = loginConfirmed
	delete(t.byConfirm, pl.confirm)
	t.mu.Unlock()
	s.shareConfirm(pl)
	return pl, confirmDone, nil
}

// sweepLogins forgets every login past its expiry, auditing those that
// were signed in at the identity provider but never bound to their device.
func (s *Server) sweepLogins() {
	now := s.now()
	var unbound []*pendingLogin
	t := s.logins
	var expired []*pendingLogin
	t.mu.Lock()
	for _, pl := range t.byHandle {
		if now.Before(pl.expires) {
			continue
		}
		t.removeLocked(pl)
		expired = append(expired, pl)
	}
	t.mu.Unlock()
	for _, pl := range expired {
		// Of the replicas that sweep one shared login, the one that
		// deletes it audits it.
		if s.forgetLogin(pl.handle) && pl.phase == loginAuthenticated && pl.failure == "" {
			unbound = append(unbound, pl)
		}
	}
	for _, pl := range unbound {
		s.unbound(pl, "expired before it was bound to the device that started it")
	}
}

// ---- handlers ----

func (s *Server) handleLoginStart(w http.ResponseWriter, r *http.Request) {
	var req proto.LoginStartRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "malformed JSON body: "+err.Error(), "check the request against the API")
		return
	}
	resp, p := s.startLogin(req, remoteHost(r))
	if p != nil {
		if p.Code == proto.CodeTooManyLogins {
			w.Header().Set("Retry-After", "60")
		}
		writeProblemDoc(w, p)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleLoginPoll(w http.ResponseWriter, r *http.Request) {
	var req proto.LoginPollRequest
	if decode(w, r, &req) {
		issueSession(w, req.Handle, req.CodeVerifier, "handle and code_verifier", s.poll)
	}
}

func (s *Server) handleLoginExchange(w http.ResponseWriter, r *http.Request) {
	var req proto.LoginExchangeRequest
	if decode(w, r, &req) {
		issueSession(w, req.Code, req.CodeVerifier, "code and code_verifier", s.exchange)
	}
}

// issueSession ends the poll and exchange handlers, whose requests carry
// a key (the login handle or the authorization code) and the PKCE
// verifier: it writes the problem for a request missing either (fields
// names them), else the session issue returns for them or its problem.
func issueSession(w http.ResponseWriter, key, verifier, fields string, issue func(key, verifier string) (*proto.Session, *proto.Problem)) {
	if key == "" || verifier == "" {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, fields+" are required", "update clustral to the coordinator's version")
		return
	}
	sess, p := issue(key, verifier)
	if p != nil {
		writeProblemDoc(w, p)
		return
	}
	writeJSON(w, http.StatusOK, sess)
}

var loginPage = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("login").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>clustral login</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family:sans-serif;margin:4em;max-width:40em">
{{- if .Err}}<h1>Login failed</h1><p>{{.Err}}</p>
{{- else if .Done}}<h1>Signed in as {{.Login}}</h1>
<p>Confirmed: the terminal on {{.Hostname}} finishes signing in now. You can close this window.</p>
{{- else if .Declined}}<h1>Login cancelled</h1>
<p>No session was issued. If you did not start this login yourself, tell your security team.</p>
{{- else}}<h1>Confirm this login</h1>
<p>You signed in as <b>{{.Login}}</b>. A device is asking to use that sign-in:</p>
<table>
<tr><td>Device</td><td><b>{{.Hostname}}</b> ({{.OS}})</td></tr>
<tr><td>Started from</td><td><b>{{.Source}}</b></td></tr>
<tr><td>Started at</td><td>{{.Started}}</td></tr>
</table>
<p><b>Only continue if you ran <code>clustral login</code> on that device just now.</b>
If someone sent you this link, or you do not recognise the device, choose Cancel.</p>
{{- if .Problem}}<p style="color:#b00">{{.Problem}}</p>{{end}}
<form method="post" action="{{.Action}}">
<input type="hidden" name="csrf" value="{{.CSRF}}">
<p><label>Code shown in your terminal: <input name="user_code" autocomplete="off" autofocus placeholder="XXXX-XXXX" size="10"></label></p>
<p><button type="submit" name="action" value="confirm">Confirm</button>
<button type="submit" name="action" value="decline">Cancel, this was not me</button></p>
</form>
{{- end}}
</body></html>`))
})

// loginPageData fills loginPage.
type loginPageData struct {
	Err, Problem                      string
	Done, Declined                    bool
	Login, Hostname, OS, Source, CSRF string
	Started, Action                   string
}

func (s *Server) pageData(pl *pendingLogin) loginPageData {
	d := loginPageData{Action: "/oidc/confirm"}
	if pl == nil {
		return d
	}
	d.Login, d.Hostname, d.OS, d.Source, d.CSRF = pl.who, pl.device.Hostname, pl.device.OS, pl.source, pl.csrf
	if d.Hostname == "" {
		d.Hostname = "(unnamed device)"
	}
	if d.OS == "" {
		d.OS = "unknown system"
	}
	d.Started = pl.started.UTC().Format("2006-01-02 15:04:05 UTC")
	return d
}

func writeLoginPage(w http.ResponseWriter, status int, d loginPageData) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	// same-origin, not no-referrer: under no-referrer a browser posts
	// the confirmation form with "Origin: null", which sameOrigin refuses.
	// Nothing is sent to another origin either way.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	w.WriteHeader(status)
	loginPage().Execute(w, d)
}

func (s *Server) handleCallback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if s.oidc == nil {
		writeLoginPage(w, http.StatusServiceUnavailable, loginPageData{Err: errNoOIDC.Error()})
		return
	}
	errMsg := q.Get("error")
	if d := q.Get("error_description"); d != "" {
		errMsg += ": " + d
	}
	pl, secret, err := s.callback(r.Context(), q.Get("state"), q.Get("code"), errMsg)
	if err != nil {
		s.metrics.login("browser", err)
		s.log.Warn("login failed", "err", err)
		s.auditFailure(proto.AuditLoginFailed, r, "", err)
		if pl != nil && pl.redirect != "" {
			// Tell the CLI at once; it shows the error in the browser too.
			http.Redirect(w, r, pl.redirect+"?"+url.Values{"error": {"login_failed"}, "error_description": {err.Error()}}.Encode(), http.StatusSeeOther)
			return
		}
		writeLoginPage(w, http.StatusUnauthorized, loginPageData{Err: err.Error()})
		return
	}
	if pl.redirect != "" {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Referrer-Policy", "no-referrer")
		http.Redirect(w, r, pl.redirect+"?"+url.Values{"code": {secret}}.Encode(), http.StatusSeeOther)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: confirmCookie, Value: secret, Path: "/oidc/confirm",
		MaxAge: max(1, int(pl.expires.Sub(s.now()).Seconds())), HttpOnly: true,
		Secure: strings.HasPrefix(s.cfg.PublicURL, "https://"), SameSite: http.SameSiteStrictMode})
	writeLoginPage(w, http.StatusOK, s.pageData(pl))
}

// sameOrigin refuses a form posted from another site: browsers send
// Origin (and Sec-Fetch-Site) with every POST.
func (s *Server) sameOrigin(r *http.Request) bool {
	if sfs := r.Header.Get("Sec-Fetch-Site"); sfs != "" && sfs != "same-origin" {
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	pu, err := url.Parse(s.cfg.PublicURL)
	if err != nil {
		return false
	}
	ou, err := url.Parse(o)
	return err == nil && origin(ou) == origin(pu)
}

// origin is u's scheme, host and port, the port made explicit.
func origin(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[strings.ToLower(u.Scheme)]
	}
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(net.JoinHostPort(u.Hostname(), port))
}

func (s *Server) handleConfirm(w http.ResponseWriter, r *http.Request) {
	if !s.sameOrigin(r) {
		writeLoginPage(w, http.StatusForbidden, loginPageData{Err: "this form was posted from another site; open the link your terminal showed"})
		return
	}
	if err := r.ParseForm(); err != nil {
		writeLoginPage(w, http.StatusBadRequest, loginPageData{Err: "malformed form: " + err.Error()})
		return
	}
	var secret string
	if c, err := r.Cookie(confirmCookie); err == nil {
		secret = c.Value
	}
	action := r.PostForm.Get("action")
	if action != "confirm" && action != "decline" {
		writeLoginPage(w, http.StatusBadRequest, loginPageData{Err: "choose Confirm or Cancel"})
		return
	}
	pl, res, err := s.confirm(secret, r.PostForm.Get("csrf"), r.PostForm.Get("user_code"), action == "decline")
	d := s.pageData(pl)
	switch {
	case res == confirmAgain:
		d.Problem = strings.ToUpper(err.Error()[:1]) + err.Error()[1:] + "."
		writeLoginPage(w, http.StatusUnprocessableEntity, d)
		return
	case err != nil:
		writeLoginPage(w, http.StatusForbidden, loginPageData{Err: err.Error()})
	case res == confirmDeclined:
		d.Declined = true
		writeLoginPage(w, http.StatusOK, d)
	default:
		d.Done = true
		writeLoginPage(w, http.StatusOK, d)
	}
}

func (s *Server) handleLoginToken(w http.ResponseWriter, r *http.Request) {
	var req proto.TokenExchangeRequest
	if !decode(w, r, &req) {
		return
	}
	if s.oidc == nil {
		writeProblem(w, http.StatusServiceUnavailable, proto.CodeLoginFailed, errNoOIDC.Error(), "configure --oidc-issuer on the coordinator")
		return
	}
	if req.IDToken == "" {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "id_token is required", "pass an ID token from the configured issuer")
		return
	}
	idt, err := s.oidc.verifyDirect(r.Context(), req.IDToken)
	if err != nil {
		s.metrics.login("token", err)
		s.log.Warn("login by token refused", "err", err)
		s.auditFailure(proto.AuditIDTokenRefused, r, "", err)
		writeProblem(w, http.StatusUnauthorized, proto.CodeLoginFailed, "ID token refused: "+err.Error(), "use a fresh ID token from "+s.cfg.OIDC.Issuer)
		return
	}
	sess, err := s.loginFromToken(idt, "token")
	s.metrics.login("token", err)
	if err != nil {
		s.auditFailure(proto.AuditIDTokenRefused, r, idt.Subject, err)
		writeProblem(w, http.StatusForbidden, proto.CodeLoginFailed, err.Error(), "")
		return
	}
	writeJSON(w, http.StatusOK, sess)
}

// whoamiResponse is served at GET /api/v1/whoami.
type whoamiResponse = proto.Whoami

func (s *Server) handleWhoami(w http.ResponseWriter, r *http.Request, p principal) {
	s.mu.Lock()
	now := s.now()
	resp := whoamiResponse{User: p.user.toProto(s.isAdmin(p.user)), SessionExpires: p.session.Expires}
	for cid := range s.clustersOf(p.user, now) {
		c := s.clusters[cid]
		rc := proto.ReachableCluster{Name: c.Name, Roles: s.rolesOn(p.user, cid, now)}
		resp.Clusters = append(resp.Clusters, rc)
	}
	for _, c := range s.clusters {
		resp.Requestable = append(resp.Requestable, c.Name)
	}
	s.mu.Unlock()
	sort.Strings(resp.Requestable)
	sort.Slice(resp.Clusters, func(i, j int) bool { return resp.Clusters[i].Name < resp.Clusters[j].Name })
	writeJSON(w, http.StatusOK, resp)
}

// handleLogout revokes the caller's session and every device under it.
func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request, p principal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.revokeSessionLocked(w, p.user, p.session, "session.revoke") {
		w.WriteHeader(http.StatusNoContent)
	}
}

// revokeSessionLocked deletes the session se of u and every device under
// it, recording action; it answers the problem itself and returns false
// when the store refuses. Called with s.mu held.
func (s *Server) revokeSessionLocked(w http.ResponseWriter, u *user, se *session, action string) bool {
	var devs []*node
	for _, d := range s.devicesByUser[u.ID] {
		if d.SessionID == se.IDHash {
			devs = append(devs, d)
		}
	}
	if !s.commit(w, "revoke session", func(tx store.Tx) error {
		if err := tx.Delete(store.Sessions, se.IDHash); err != nil {
			return err
		}
		n, err := s.deleteNodesWhere(tx, devs, func(n *node) bool { return n.Kind == proto.KindDevice && n.SessionID == se.IDHash })
		if err != nil {
			return err
		}
		md := map[string]any{"devices": n}
		if se.Kind != "" {
			md["kind"] = string(se.Kind)
		}
		return s.recordChange(tx, u.Login, action, u.ID, md)
	}) {
		return false
	}
	delete(s.sessions, se.IDHash)
	for _, d := range devs {
		s.removeNodeAndSyncLocked(d)
	}
	return true
}
