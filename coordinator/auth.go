package coordinator

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/oauth2"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/capool"
	"github.com/clustral/clustral/proto"
)

// oidcProvider is the coordinator's view of the identity provider: it is
// the only OIDC client.
type oidcProvider struct {
	cfg      OIDCConfig
	provider *oidc.Provider
	oauth    oauth2.Config
	verifier *oidc.IDTokenVerifier // audience: our client id
	client   *http.Client          // trusts cfg.CAFile
}

func newOIDCProvider(ctx context.Context, cfg OIDCConfig, redirectURL string) (*oidcProvider, error) {
	hc := http.DefaultClient
	if cfg.CAFile != "" {
		pool, err := capool.Load(cfg.CAFile, "OIDC CA file")
		if err != nil {
			return nil, err
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		hc = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	dctx, cancel := context.WithTimeout(oidc.ClientContext(ctx, hc), 30*time.Second)
	defer cancel()
	p, err := oidc.NewProvider(dctx, cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("OIDC discovery at %s: %w (check --oidc-issuer and that the coordinator can reach it)", cfg.Issuer, err)
	}
	return &oidcProvider{
		cfg:      cfg,
		provider: p,
		client:   hc,
		oauth: oauth2.Config{
			ClientID:     cfg.ClientID,
			ClientSecret: cfg.ClientSecret,
			Endpoint:     p.Endpoint(),
			RedirectURL:  redirectURL,
			Scopes:       append([]string{oidc.ScopeOpenID}, cfg.Scopes...),
		},
		verifier: p.Verifier(&oidc.Config{ClientID: cfg.ClientID}),
	}, nil
}

func (p *oidcProvider) ctx(ctx context.Context) context.Context {
	return oidc.ClientContext(ctx, p.client)
}

// verifyDirect verifies an ID token presented for direct exchange: signed
// by the issuer, an ID token and not an access token, issued to our client
// id or one of the extra audiences (azp, when present) and meant for one
// of them (aud).
func (p *oidcProvider) verifyDirect(ctx context.Context, raw string) (*oidc.IDToken, error) {
	v := p.provider.Verifier(&oidc.Config{SkipClientIDCheck: true})
	tok, err := v.Verify(p.ctx(ctx), raw)
	if err != nil {
		return nil, err
	}
	// The signature is good; what kind of token is it, and for whom?
	if err := refuseAccessToken(raw); err != nil {
		return nil, err
	}
	allowed := append([]string{p.cfg.ClientID}, p.cfg.ExtraAudiences...)
	// azp, when present, is the client the token was issued to (OIDC Core
	// §2): a token some other client obtained, even with our client id in
	// its audience, is that client's, not ours.
	var c struct {
		AZP string `json:"azp"`
	}
	if err := tok.Claims(&c); err != nil {
		return nil, fmt.Errorf("decode ID token claims: %w", err)
	}
	if c.AZP != "" && !slices.Contains(allowed, c.AZP) {
		return nil, fmt.Errorf("ID token was issued to client %q (azp), which is not accepted (accepted: %v; add it with --oidc-extra-audience)", c.AZP, allowed)
	}
	for _, a := range tok.Audience {
		if slices.Contains(allowed, a) {
			return tok, nil
		}
	}
	return nil, fmt.Errorf("ID token audience %v is not accepted (accepted: %v)", tok.Audience, allowed)
}

// refuseAccessToken returns an error when the already verified JWT raw is
// an access token rather than an ID token. An access token is meant for a
// resource server and says nothing about the login at a client; accepting
// one would let any API that receives the user's access tokens sign in as
// them. Access tokens are told by what issuers mark them with: the JOSE
// type at+jwt (RFC 9068), token_use "access" (Cognito), typ "Bearer"
// (Keycloak), or a scope or scp claim, which ID tokens do not carry.
func refuseAccessToken(raw string) error {
	claims := jwt.MapClaims{}
	t, _, err := jwt.NewParser().ParseUnverified(raw, claims)
	if err != nil {
		return fmt.Errorf("parse ID token: %w", err)
	}
	refuse := func(why string) error {
		return fmt.Errorf("this is an access token (%s), not an ID token: pass the id_token the identity provider issued", why)
	}
	if typ, _ := t.Header["typ"].(string); strings.EqualFold(strings.TrimPrefix(strings.ToLower(typ), "application/"), "at+jwt") {
		return refuse("JOSE type " + typ)
	}
	if use, _ := claims["token_use"].(string); use != "" && use != "id" {
		return refuse("token_use " + use)
	}
	if typ, _ := claims["typ"].(string); strings.EqualFold(typ, "Bearer") {
		return refuse("typ " + typ)
	}
	for _, k := range []string{"scope", "scp"} {
		if _, ok := claims[k]; ok {
			return refuse(k + " claim")
		}
	}
	return nil
}

// idClaims is the identity an ID token carries, as the coordinator uses it.
type idClaims struct {
	Subject string // issuer#sub: the user's stable key
	Login   string // the login claim: the name Kubernetes sees
	// Email is the email claim when the provider marks it verified
	// (email_verified is the boolean true), else empty: an unverified
	// address names nobody.
	Email  string
	Name   string
	Groups []string
}

// claims pulls the user's identity out of a verified ID token. An email
// counts only when email_verified is the JSON boolean true: missing, the
// string "false" or anything else is unverified. When the login claim is
// the email, an unverified email refuses the login.
func (p *oidcProvider) claims(tok *oidc.IDToken) (idClaims, error) {
	var all map[string]any
	if err := tok.Claims(&all); err != nil {
		return idClaims{}, fmt.Errorf("decode ID token claims: %w", err)
	}
	str := func(k string) string { v, _ := all[k].(string); return v }
	verified, _ := all["email_verified"].(bool)
	email := str("email")
	if p.cfg.LoginClaim == "email" && !verified {
		if email == "" {
			return idClaims{}, errors.New(`ID token has no "email" claim; request the email scope, or configure --oidc-login-claim`)
		}
		return idClaims{}, fmt.Errorf("email %s is not verified at the identity provider (email_verified is not true); verify it there, or configure --oidc-login-claim", email)
	}
	c := idClaims{Subject: tok.Issuer + "#" + tok.Subject, Name: str("name")}
	if verified {
		c.Email = email
	}
	c.Login = str(p.cfg.LoginClaim)
	if c.Login == "" {
		return idClaims{}, fmt.Errorf("ID token has no %q claim; configure --oidc-login-claim or request the right scope", p.cfg.LoginClaim)
	}
	switch g := all[p.cfg.GroupsClaim].(type) {
	case []any:
		for _, x := range g {
			if s, ok := x.(string); ok && s != "" {
				c.Groups = append(c.Groups, s)
			}
		}
	case string:
		c.Groups = []string{g}
	}
	slices.Sort(c.Groups)
	c.Groups = slices.Compact(c.Groups)
	return c, nil
}

// loginFromToken creates or updates the user from a verified ID token and
// opens a session.
func (s *Server) loginFromToken(idt *oidc.IDToken, how string) (*proto.Session, error) {
	c, err := s.oidc.claims(idt)
	if err != nil {
		return nil, err
	}
	if !s.cfg.Allow.permits(c) && !s.isConfiguredAdmin(c.Login, c.Groups) {
		return nil, fmt.Errorf("%s may not log in to this coordinator: no allow rule (email domain, group or user) names them; ask an administrator", c.Login)
	}
	login, email, name, groups := c.Login, c.Email, c.Name, c.Groups
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()

	u := s.usersBySub[c.Subject]
	// A login is one person's: another identity at the provider whose
	// login claim now reads the same (a renamed account, a reused
	// address) must not inherit that user's rights.
	if other := s.userByLogin(login); other != nil && other != u {
		s.audit(proto.AuditEvent{Code: proto.AuditLoginCollision, Actor: login, Object: other.ID, Outcome: proto.OutcomeDenied,
			Metadata: map[string]string{"subject": c.Subject, "login": login, "holder": other.ID}})
		return nil, &loginCollisionError{Login: login}
	}
	var before map[string]bool
	var nu user
	if u != nil {
		if u.Disabled {
			return nil, fmt.Errorf("user %s is disabled; ask an administrator", u.Login)
		}
		before = s.clustersOf(u, now)
		nu = *u
	} else {
		nu = user{ID: s.newID("usr"), Subject: c.Subject, Created: now}
	}
	nu.Login, nu.Email, nu.Name, nu.Groups, nu.LastSeen = login, email, name, groups, now

	sid := newSecret("")
	se := &session{IDHash: hashSecret(sid), UserID: nu.ID, Created: now, Expires: now.Add(s.cfg.SessionTTL)}
	if how == "console" {
		se.Kind, se.Expires = proto.SessionConsole, now.Add(s.cfg.ConsoleSessionTTL)
	}
	if idt.Expiry.After(now) && how == "token" && idt.Expiry.Before(se.Expires) {
		// A directly exchanged token gives no more than it carries.
		se.Expires = idt.Expiry
	}
	err = s.store.Update(func(tx store.Tx) error {
		if err := store.Put(tx, store.Users, nu.ID, nu); err != nil {
			return err
		}
		if err := store.Put(tx, store.Sessions, se.IDHash, se); err != nil {
			return err
		}
		return s.recordChange(tx, nu.Login, "login."+how, nu.ID, map[string]any{"groups": groups})
	})
	if err != nil {
		return nil, fmt.Errorf("store login: %w", err)
	}
	stored := nu
	s.indexUser(&stored)
	s.sessions[se.IDHash] = se
	if u != nil && !slices.Equal(u.Groups, groups) {
		s.userChangedLocked(&stored, before)
	}
	tok, err := s.signSession(&stored, sid, se.Expires)
	if err != nil {
		return nil, err
	}
	s.log.Info("login", "user", stored.Login, "how", how, "groups", groups)
	return &proto.Session{Token: tok, ExpiresAt: se.Expires, User: stored.toProto(s.isAdmin(&stored))}, nil
}

// ---- sessions ----

type sessionClaims struct {
	jwt.RegisteredClaims
	SessionID string `json:"sid"`
}

func (s *Server) signSession(u *user, sid string, exp time.Time) (string, error) {
	c := sessionClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    s.cfg.PublicURL,
			Subject:   u.ID,
			Audience:  jwt.ClaimStrings{s.cfg.PublicURL},
			IssuedAt:  jwt.NewNumericDate(s.now()),
			ExpiresAt: jwt.NewNumericDate(exp),
		},
		SessionID: sid,
	}
	return jwt.NewWithClaims(jwt.SigningMethodES256, c).SignedString(s.signKey)
}

// verifiedSessionsMax bounds the session tokens whose check is cached,
// and verifiedSessionTTL how long one stays (its expiry is checked on
// every use regardless).
const (
	verifiedSessionsMax = 4096
	verifiedSessionTTL  = 10 * time.Minute
)

// verifySession checks the signature, issuer, audience and expiry of the
// session token raw and returns its claims. A token whose signature
// checked out is cached (s.verified), so a client's repeated calls pay
// the ES256 check once: it was 28% of the CPU of a device registration
// (BenchmarkRegisterDeviceHTTP). A cached token's expiry is checked
// again against s.now on every use, and the caller looks the session up
// in memory every time, so a logout or revocation refuses it as before.
func (s *Server) verifySession(raw string) (sessionClaims, error) {
	if v, ok := s.verified.Get(raw); ok {
		c := v.(sessionClaims)
		if !s.now().Before(c.ExpiresAt.Time) {
			return sessionClaims{}, jwt.ErrTokenExpired
		}
		return c, nil
	}
	var c sessionClaims
	_, err := jwt.ParseWithClaims(raw, &c, func(t *jwt.Token) (any, error) { return &s.signKey.PublicKey, nil },
		jwt.WithValidMethods([]string{"ES256"}),
		jwt.WithIssuer(s.cfg.PublicURL),
		jwt.WithAudience(s.cfg.PublicURL),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(s.now),
	)
	if err != nil {
		return sessionClaims{}, err
	}
	s.verified.Add(raw, c, verifiedSessionTTL)
	return c, nil
}

// principal is the caller of an API request.
type principal struct {
	user    *user
	session *session
}

// authSession verifies the bearer session token; it writes the problem
// response and returns false when the caller is not authenticated.
func (s *Server) authSession(w http.ResponseWriter, r *http.Request) (principal, bool) {
	raw, ok := bearer(r)
	if !ok {
		writeProblem(w, http.StatusUnauthorized, proto.CodeUnauthenticated, "missing session token", "run clustral login")
		return principal{}, false
	}
	c, err := s.verifySession(raw)
	if errors.Is(err, jwt.ErrTokenExpired) {
		writeProblem(w, http.StatusUnauthorized, proto.CodeSessionExpired, "your session expired", "run clustral login")
		return principal{}, false
	}
	if err != nil {
		writeProblem(w, http.StatusUnauthorized, proto.CodeUnauthenticated, "invalid session token", "run clustral login")
		return principal{}, false
	}
	seHash := hashSecret(c.SessionID)
	s.awaitReplicated(r.Context(), func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.sessions[seHash] != nil && s.users[c.Subject] != nil
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	se := s.sessions[seHash]
	u := s.users[c.Subject]
	if se == nil || u == nil || se.UserID != u.ID {
		writeProblem(w, http.StatusUnauthorized, proto.CodeSessionExpired, "this session was revoked or has expired", "run clustral login")
		return principal{}, false
	}
	if u.Disabled {
		writeProblem(w, http.StatusForbidden, proto.CodeForbidden, "user "+u.Login+" is disabled", "ask an administrator")
		return principal{}, false
	}
	return principal{user: u, session: se}, true
}

// authNode verifies a node token; it writes the problem response and
// returns false when the caller is not a registered node.
func (s *Server) authNode(w http.ResponseWriter, r *http.Request) (*node, bool) {
	raw, ok := bearer(r)
	if !ok {
		writeProblem(w, http.StatusUnauthorized, proto.CodeUnauthenticated, "missing node token", "run clustral up again")
		return nil, false
	}
	var n *node
	s.awaitReplicated(r.Context(), func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		n = s.nodesByToken[hashSecret(raw)]
		return n != nil
	})
	if n == nil {
		writeProblem(w, http.StatusUnauthorized, proto.CodeUnauthenticated, "unknown node token: the node was removed or expired", "register again (clustral up, or restart the agent)")
		return nil, false
	}
	return n, true
}

// ---- authentication wrappers of the route table (see Handler) ----

// userHandler serves a request of the logged-in user p.
type userHandler func(w http.ResponseWriter, r *http.Request, p principal)

// nodeHandler serves a request of the registered node n.
type nodeHandler func(w http.ResponseWriter, r *http.Request, n *node)

// authed serves a request with h once auth has authenticated it as who.
// auth writes the refusal itself and reports whether the request goes on.
func authed[Who any](auth func(http.ResponseWriter, *http.Request) (Who, bool), h func(http.ResponseWriter, *http.Request, Who)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if who, ok := auth(w, r); ok {
			h(w, r, who)
		}
	}
}

// public marks a route that takes no credential. It adds nothing: it is
// there so that every route in Handler names its authentication.
func (s *Server) public(h http.HandlerFunc) http.HandlerFunc { return h }

// user wraps a handler for a logged-in user. The session is checked when
// the headers arrive and again once the body has been read (see
// authSessionBody), so a logout or a disable that lands while the body is
// on its way authorizes nothing.
func (s *Server) user(h userHandler) http.HandlerFunc {
	return authed(s.authSessionBody, h)
}

// admin is user for a handler that only administrators may call. The
// administrator's rights are checked after the body has arrived, with the
// session; a refusal is audited.
func (s *Server) admin(h userHandler) http.HandlerFunc {
	return s.user(func(w http.ResponseWriter, r *http.Request, p principal) {
		s.mu.Lock()
		isAdmin := s.isAdmin(p.user)
		s.mu.Unlock()
		if !isAdmin {
			s.audit(proto.AuditEvent{Code: proto.AuditAPIDenied, Actor: p.user.Login, Outcome: proto.OutcomeDenied, Error: proto.CodeForbidden,
				Metadata: map[string]string{"method": r.Method, "path": r.URL.Path}})
			writeProblem(w, http.StatusForbidden, proto.CodeForbidden, p.user.Login+" is not an administrator", "ask an administrator; admins are named in the coordinator's configuration")
			return
		}
		h(w, r, p)
	})
}

// node wraps a handler for a registered device or agent, authenticated by
// its node token.
func (s *Server) node(h nodeHandler) http.HandlerFunc {
	return authed(s.authNode, h)
}

// agent is node for a route only agents may call; a device is refused
// with 403.
func (s *Server) agent(h nodeHandler) http.HandlerFunc {
	return s.node(func(w http.ResponseWriter, r *http.Request, n *node) {
		if n.Kind != proto.KindAgent {
			writeProblem(w, http.StatusForbidden, proto.CodeForbidden, "only agents may "+r.Method+" "+r.URL.Path, "this call takes an agent's node token; a device's is refused")
			return
		}
		h(w, r, n)
	})
}

// deviceOwner wraps the device registration. The session is checked when
// the headers arrive, so a caller without one is refused before its body
// is read, and the handler checks it again at the write (registerNode).
// Refusals cost the source a token of its rate limit ("register"), and a
// source without tokens is refused before its session is looked at.
func (s *Server) deviceOwner(h userHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.sourceReady(w, r, "register") {
			return
		}
		p, ok := s.authSession(w, r)
		if !ok {
			s.sourceFailed(r)
			return
		}
		h(w, r, p)
	}
}

// joinToken wraps the agent registration: the caller presents a cluster's
// join token, which is looked up when the headers arrive, so a caller
// without a known one is refused (and audited) before its body is read;
// the handler gets the token's hash and looks it up again at the write
// (registerNode). Refusals cost the source a token of its rate limit
// ("register"), as in deviceOwner.
func (s *Server) joinToken(h func(w http.ResponseWriter, r *http.Request, tokenHash string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.sourceReady(w, r, "register") {
			return
		}
		raw, ok := bearer(r)
		if !ok {
			s.sourceFailed(r)
			writeProblem(w, http.StatusUnauthorized, proto.CodeInvalidJoinToken, "missing join token", "pass the cluster's join token (clustral clusters add prints it)")
			return
		}
		tokenHash := hashSecret(raw)
		known := s.awaitReplicated(r.Context(), func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.clustersByToken[tokenHash] != nil
		})
		if !known {
			s.refuseJoinToken(w, r)
			return
		}
		h(w, r, tokenHash)
	}
}

// authSessionBody is authSession for a request whose body may change
// state. The session is checked when the headers arrive, so a caller
// without one is refused before its body is read; then the whole body is
// read (bounded by proto.MaxBodyBytes and the server's read timeout) and
// the session is checked again. A logout or a disable that lands while
// the body is on its way thus authorizes nothing: a client cannot hold a
// checked request open until its credential is gone. The handler decodes
// the buffered body as usual. Like authSession, it writes the problem
// response itself and returns false when the request is refused.
func (s *Server) authSessionBody(w http.ResponseWriter, r *http.Request) (principal, bool) {
	if _, ok := s.authSession(w, r); !ok {
		return principal{}, false
	}
	if r.Body != nil && r.Body != http.NoBody {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				writeProblem(w, http.StatusRequestEntityTooLarge, proto.CodeTooLarge, fmt.Sprintf("request body over %d bytes", mbe.Limit), "send a smaller request")
			} else {
				writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "read request body: "+err.Error(), "send the whole body at once")
			}
			return principal{}, false
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.ContentLength = int64(len(b))
	}
	return s.authSession(w, r)
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	const p = "Bearer "
	if len(h) <= len(p) || !strings.EqualFold(h[:len(p)], p) {
		return "", false
	}
	return strings.TrimSpace(h[len(p):]), true
}

// isAdmin reports whether u is an administrator by the configuration.
// Called with s.mu held or on an immutable user.
func (s *Server) isAdmin(u *user) bool {
	if u == nil || u.Disabled {
		return false
	}
	if s.isConfiguredAdmin(u.Login, u.Groups) {
		return true
	}
	// Administrators granted by a role with Admin set.
	now := s.now()
	for _, a := range s.assignmentsOf(u) {
		if r := s.roles[a.RoleID]; r != nil && r.Admin && a.activeAt(now) {
			return true
		}
	}
	return false
}

// isConfiguredAdmin reports whether the configuration names login (the
// login claim, never an email that is not the login) or one of groups as
// an administrator.
func (s *Server) isConfiguredAdmin(login string, groups []string) bool {
	for _, a := range s.cfg.Admins {
		if strings.EqualFold(a, login) {
			return true
		}
	}
	for _, g := range s.cfg.AdminGroups {
		if slices.Contains(groups, g) {
			return true
		}
	}
	return false
}

// loginCollisionError refuses a login whose login claim already belongs to
// another user (another subject at the identity provider).
type loginCollisionError struct{ Login string }

func (e *loginCollisionError) Error() string {
	return fmt.Sprintf("login %s already belongs to another user of this coordinator; logins are unique. Ask an administrator: the identity provider now gives your account a login that another account had", e.Login)
}
