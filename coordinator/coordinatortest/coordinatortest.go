// Package coordinatortest runs a real coordinator in-process for other
// packages' tests: its store is bbolt in a temporary directory, its clock
// is the caller's, and a small OIDC identity provider served beside it
// signs users in, so a test can log in, set up clusters, roles and
// grants through the API, and run a client against what the coordinator
// really answers.
package coordinatortest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/oauth2"

	"github.com/clustral/clustral/coordinator"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// ClientID is the OIDC client id the coordinator is configured with.
const ClientID = "clustral"

// IssuerPath is where the identity provider is served on the
// coordinator's test server: its issuer is URL + IssuerPath.
const IssuerPath = "/idp"

// Coordinator is a coordinator serving HTTPS on a loopback test server,
// with its identity provider at URL + IssuerPath. Start closes it when
// the test ends. Login, LoginClaims, Do, RegisterAgent and Connect fail
// the test on any error, so they run on the test's goroutine; the other
// methods may be called from any goroutine.
type Coordinator struct {
	*coordinator.Server
	// URL is the coordinator's public URL, https://127.0.0.1:port.
	URL string
	// CAFile is a PEM file with the test server's certificate, for a
	// client to trust.
	CAFile string

	tb  testing.TB
	srv *httptest.Server
	key *ecdsa.PrivateKey

	store *failingStore

	mu      sync.Mutex     // guards the fields below
	reqs    []string       // see Requests
	next    map[string]any // claims of whoever the issuer signs in next
	refusal string         // or why it refuses the next sign-in
	codes   map[string]codeGrant
}

// Start starts a coordinator with its bbolt store in tb.TempDir(), the
// clock now, the identity provider beside it, and configure (if not nil)
// applied to its Config last. Logins get sessions of 8 hours unless
// configure sets SessionTTL.
func Start(tb testing.TB, now func() time.Time, configure func(*coordinator.Config)) *Coordinator {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	c := &Coordinator{tb: tb, key: key, codes: map[string]codeGrant{}}
	// The URL must be known before the coordinator is made, and its OIDC
	// discovery needs the issuer up: serve the issuer first and plug the
	// coordinator in after.
	var api http.Handler = http.NotFoundHandler()
	mux := http.NewServeMux()
	mux.Handle(IssuerPath+"/", http.StripPrefix(IssuerPath, c.issuer()))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.record(r)
		api.ServeHTTP(w, r)
	})
	c.srv = httptest.NewUnstartedServer(mux)
	c.srv.StartTLS()
	tb.Cleanup(c.srv.Close)
	c.URL = c.srv.URL
	c.CAFile = filepath.Join(tb.TempDir(), "ca.pem")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.srv.Certificate().Raw})
	if err := os.WriteFile(c.CAFile, ca, 0o600); err != nil {
		tb.Fatal(err)
	}

	cfg := coordinator.Config{
		Listen:     c.srv.Listener.Addr().String(),
		STUNListen: "off",
		PublicURL:  c.URL,
		DataDir:    tb.TempDir(),
		OIDC:       coordinator.OIDCConfig{Issuer: c.URL + IssuerPath, ClientID: ClientID, ClientSecret: "secret", CAFile: c.CAFile},
		SessionTTL: 8 * time.Hour,
		Logger:     slog.New(slog.DiscardHandler),
		Now:        now,
	}
	if configure != nil {
		configure(&cfg)
	}
	// As coordinator.New, with a store that FailStore can break.
	st, err := store.OpenBolt(filepath.Join(cfg.DataDir, "coordinator.db"))
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	c.store = &failingStore{Store: st}
	s, err := coordinator.NewWithStore(context.Background(), cfg, c.store)
	if err != nil {
		st.Close()
		tb.Fatalf("start coordinator: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	c.Server = s
	api = s.Handler()
	return c
}

// issuer serves OIDC discovery and the signing keys: enough for the
// coordinator to verify the ID tokens Login mints.
func (c *Coordinator) issuer() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		iss := c.URL + IssuerPath
		json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                iss,
			"authorization_endpoint":                iss + "/authorize",
			"token_endpoint":                        iss + "/token",
			"jwks_uri":                              iss + "/keys",
			"id_token_signing_alg_values_supported": []string{"ES256"},
		})
	})
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &c.key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	})
	// The browser's sign-in: whoever SignInNext named is signed in at
	// once, and the code goes back to the coordinator.
	mux.HandleFunc("GET /authorize", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		c.mu.Lock()
		claims, refusal := c.next, c.refusal
		c.mu.Unlock()
		if (claims == nil && refusal == "") || q.Get("code_challenge_method") != "S256" {
			http.Error(w, "nobody to sign in (SignInNext or RefuseNext), or no PKCE", http.StatusBadRequest)
			return
		}
		u, err := url.Parse(q.Get("redirect_uri"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		v := u.Query()
		if refusal != "" {
			v.Set("error", "access_denied")
			v.Set("error_description", refusal)
		} else {
			code := rand.Text()
			c.mu.Lock()
			c.codes[code] = codeGrant{claims: claims, nonce: q.Get("nonce"), challenge: q.Get("code_challenge")}
			c.mu.Unlock()
			v.Set("code", code)
		}
		v.Set("state", q.Get("state"))
		u.RawQuery = v.Encode()
		http.Redirect(w, r, u.String(), http.StatusFound)
	})
	mux.HandleFunc("POST /token", func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		c.mu.Lock()
		g, ok := c.codes[r.PostForm.Get("code")]
		delete(c.codes, r.PostForm.Get("code"))
		c.mu.Unlock()
		if !ok || oauth2.S256ChallengeFromVerifier(r.PostForm.Get("code_verifier")) != g.challenge {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			w.Write([]byte(`{"error":"invalid_grant"}`))
			return
		}
		claims := maps.Clone(g.claims)
		claims["nonce"] = g.nonce
		idt, err := c.idToken(claims)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"access_token": "at", "token_type": "Bearer", "expires_in": 300, "id_token": idt})
	})
	return mux
}

// codeGrant is an authorization code the issuer handed out.
type codeGrant struct {
	claims           map[string]any
	nonce, challenge string
}

// SignInNext makes email (with groups) the user the identity provider
// signs in when a browser comes to it, as for a login the CLI started.
func (c *Coordinator) SignInNext(email string, groups ...string) {
	if groups == nil {
		groups = []string{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.next, c.refusal = map[string]any{"email": email, "groups": groups}, ""
}

// RefuseNext makes the identity provider refuse the next browser that
// comes to it, with error access_denied and the description reason, as
// when the user cancels.
func (c *Coordinator) RefuseNext(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.next, c.refusal = nil, reason
}

// Login signs email in with groups by ID-token exchange; see
// LoginClaims.
func (c *Coordinator) Login(email string, groups ...string) proto.Session {
	c.tb.Helper()
	if groups == nil {
		groups = []string{}
	}
	return c.LoginClaims(map[string]any{"email": email, "groups": groups})
}

// idToken mints an ID token for claims, which must hold "email"; "sub"
// defaults to "sub-<email>", "name" to the email, "email_verified" to
// true and "groups" to none. Its validity is real time, which the OIDC
// verifier checks.
func (c *Coordinator) idToken(claims map[string]any) (string, error) {
	email, ok := claims["email"].(string)
	if !ok {
		return "", fmt.Errorf("no email in the claims %v", claims)
	}
	mc := jwt.MapClaims{
		"iss": c.URL + IssuerPath, "aud": ClientID, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
		"sub": "sub-" + email, "email_verified": true, "name": email, "groups": []string{},
	}
	for k, v := range claims {
		mc[k] = v
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, mc)
	tok.Header["kid"] = "k1"
	return tok.SignedString(c.key)
}

// LoginClaims signs in the user the ID token's claims describe by
// ID-token exchange (POST /api/v1/login/token) and returns the session
// the coordinator issued. claims must hold "email"; "sub" defaults to
// "sub-<email>", "name" to the email, "email_verified" to true and
// "groups" to none. The token's validity is real time, which the OIDC
// verifier checks; the session's is the coordinator's clock.
func (c *Coordinator) LoginClaims(claims map[string]any) proto.Session {
	c.tb.Helper()
	idt, err := c.idToken(claims)
	if err != nil {
		c.tb.Fatal(err)
	}
	var s proto.Session
	c.Do("", http.MethodPost, proto.APIVersion+"/login/token", proto.TokenExchangeRequest{IDToken: idt}, &s)
	return s
}

// Do sends a JSON request with the bearer token (none if empty) and
// decodes a 2xx answer into out (if not nil); any other answer fails the
// test.
func (c *Coordinator) Do(token, method, path string, body, out any) {
	c.tb.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			c.tb.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.URL+path, rd)
	if err != nil {
		c.tb.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Client().Do(req)
	if err != nil {
		c.tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.tb.Fatal(err)
	}
	if resp.StatusCode/100 != 2 {
		c.tb.Fatalf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.tb.Fatal(fmt.Errorf("%s %s: decode %s: %w", method, path, b, err))
		}
	}
}

// Client returns an HTTP client that trusts the test server.
func (c *Coordinator) Client() *http.Client { return c.srv.Client() }

// Requests returns the API requests the coordinator received since the
// last call, in order, as "METHOD /path ?query body" (the query and the
// body, with surrounding space trimmed, only when present).
func (c *Coordinator) Requests() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.reqs
	c.reqs = nil
	return r
}

func (c *Coordinator) record(r *http.Request) {
	s := r.Method + " " + r.URL.Path
	if r.URL.RawQuery != "" {
		s += " ?" + r.URL.RawQuery
	}
	if r.Body != nil {
		b, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil {
			c.tb.Errorf("read request body: %v", err)
		}
		if t := bytes.TrimSpace(b); len(t) > 0 {
			s += " " + string(t)
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
	}
	c.mu.Lock()
	c.reqs = append(c.reqs, s)
	c.mu.Unlock()
}

// IDs returns a Config.NewID that hands out ids in order by their
// prefix (the text before "_"), and once a prefix's are used up,
// prefix_00000000000000000001 and on.
func IDs(ids ...string) func(prefix string) string {
	var mu sync.Mutex
	queue := map[string][]string{}
	for _, id := range ids {
		p, _, _ := strings.Cut(id, "_")
		queue[p] = append(queue[p], id)
	}
	n := 0
	return func(prefix string) string {
		mu.Lock()
		defer mu.Unlock()
		if q := queue[prefix]; len(q) > 0 {
			queue[prefix] = q[1:]
			return q[0]
		}
		n++
		return fmt.Sprintf("%s_%020x", prefix, n)
	}
}

// RegisterAgent registers an agent named hostname with a cluster's join
// token, with a random WireGuard key and a serving key's certificate
// request, and returns the coordinator's answer.
func (c *Coordinator) RegisterAgent(joinToken, hostname string) proto.RegisterResponse {
	c.tb.Helper()
	var pub proto.Key
	rand.Read(pub[:])
	csr, _ := testkit.CSR(c.tb, hostname)
	var resp proto.RegisterResponse
	c.Do(joinToken, http.MethodPost, proto.APIVersion+"/agents", proto.RegisterAgentRequest{PublicKey: pub, Hostname: hostname, CSR: csr}, &resp)
	return resp
}

// Connect opens the map stream of the node nodeToken authenticates and
// returns once its first map arrived, when the coordinator counts the
// node online; it stays open until the test ends.
func (c *Coordinator) Connect(nodeToken string) {
	c.tb.Helper()
	req, err := http.NewRequest(http.MethodGet, c.URL+proto.APIVersion+"/map", nil)
	if err != nil {
		c.tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+nodeToken)
	resp, err := c.Client().Do(req)
	if err != nil {
		c.tb.Fatal(err)
	}
	c.tb.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		c.tb.Fatalf("map stream: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	if _, err := bufio.NewReader(resp.Body).ReadBytes('\n'); err != nil {
		c.tb.Fatalf("map stream: %v", err)
	}
}

// Addrs returns a Config.AddrRand under which the i-th node to register
// gets offsets[i] into each overlay prefix (if that address is free),
// and later ones their prefixes' first free addresses (IPv4) or any
// (IPv6).
func Addrs(offsets ...uint64) io.Reader {
	var b []byte
	for _, off := range offsets {
		for range 2 { // the IPv4 address, then the IPv6 one
			b = binary.BigEndian.AppendUint64(b, off)
		}
	}
	return bytes.NewReader(b)
}

// CloseServer stops serving: from then on nothing answers at URL.
func (c *Coordinator) CloseServer() { c.srv.Close() }

// Store returns the coordinator's store, for a test to do what someone
// with access to the coordinator's data can: read it, or change it
// behind the coordinator's back.
func (c *Coordinator) Store() store.Store { return c.store.Store }

// FailStore makes every store transaction fail with err from now on, as
// a store that became unavailable does; nil makes them work again.
func (c *Coordinator) FailStore(err error) {
	if err == nil {
		c.store.err.Store(nil)
		return
	}
	c.store.err.Store(&err)
}

// failingStore is a store whose transactions fail while err is set.
type failingStore struct {
	store.Store
	err atomic.Pointer[error]
}

func (f *failingStore) View(fn func(store.Tx) error) error {
	if err := f.err.Load(); err != nil {
		return *err
	}
	return f.Store.View(fn)
}

func (f *failingStore) Update(fn func(store.Tx) error) error {
	if err := f.err.Load(); err != nil {
		return *err
	}
	return f.Store.Update(fn)
}

// ConfirmLogin plays the browser of a headless login: it follows authURL
// (the identity provider signs in whoever SignInNext named, and sends it
// to the coordinator), and confirms the login on the coordinator's page
// with userCode, the code the CLI shows. It returns the page the
// coordinator answers with last.
func (c *Coordinator) ConfirmLogin(authURL, userCode string) (string, error) {
	jar, err := cookiejar.New(nil)
	if err != nil {
		return "", err
	}
	browser := *c.Client()
	browser.Jar = jar
	resp, err := browser.Get(authURL)
	if err != nil {
		return "", err
	}
	page, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", err
	}
	m := csrfRE.FindSubmatch(page)
	if m == nil {
		return "", fmt.Errorf("no confirmation form on the page (%s):\n%s", resp.Status, page)
	}
	resp, err = browser.PostForm(c.URL+"/oidc/confirm", url.Values{"action": {"confirm"}, "csrf": {string(m[1])}, "user_code": {userCode}})
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	page, err = io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("confirm: %s:\n%s", resp.Status, page)
	}
	return string(page), err
}

// csrfRE finds the confirmation form's CSRF token.
var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
