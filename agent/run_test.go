package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"k8s.io/client-go/rest"

	"github.com/clustral/clustral/agent/spool"
	"github.com/clustral/clustral/coordinator"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

func TestConfigValidation(t *testing.T) {
	valid := func() Config {
		return Config{
			CoordinatorURL: "https://clustral.example.com",
			JoinToken:      "cjt_token",
			Upstream:       &rest.Config{Host: "https://kubernetes.default.svc"},
			AuditDir:       "/var/lib/clustral/agent-audit",
		}
	}
	tests := []struct {
		name   string
		change func(*Config)
		want   string // "" means valid
	}{
		{"valid", func(*Config) {}, ""},
		{"plain http is the caller's decision", func(c *Config) { c.CoordinatorURL = "http://10.0.0.1:7443" }, ""},
		{"no coordinator", func(c *Config) { c.CoordinatorURL = "" }, "set Config.CoordinatorURL"},
		{"coordinator not a URL", func(c *Config) { c.CoordinatorURL = "clustral.example.com" }, "is not an http(s) URL"},
		{"coordinator other scheme", func(c *Config) { c.CoordinatorURL = "ftp://clustral.example.com" }, "is not an http(s) URL"},
		{"no join token", func(c *Config) { c.JoinToken = "" }, "set Config.JoinToken"},
		{"client with a timeout", func(c *Config) { c.HTTPClient = &http.Client{Timeout: time.Minute} }, "set it to zero"},
		{"no upstream", func(c *Config) { c.Upstream = nil }, "set Config.Upstream"},
		{"port too large", func(c *Config) { c.WireGuardPort = 70000 }, "Config.WireGuardPort 70000 is not a UDP port"},
		{"negative port", func(c *Config) { c.WireGuardPort = -1 }, "Config.WireGuardPort -1 is not a UDP port"},
		{"no audit dir", func(c *Config) { c.AuditDir = "" }, "set Config.AuditDir"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.change(&c)
			err := c.validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	// Run refuses a bad Config before it touches anything.
	c := valid()
	c.JoinToken, c.AuditDir = "", t.TempDir()+"/never"
	err := Run(context.Background(), c)
	if err == nil || !strings.Contains(err.Error(), "Config.JoinToken") {
		t.Fatalf("Run with no join token = %v", err)
	}
}

// testCoordinator is a real coordinator in-process, with an OIDC issuer
// that signs whatever ID token the test asks for.
type testCoordinator struct {
	t       *testing.T
	url     string
	srv     *coordinator.Server
	idToken func(email string) string // a signed ID token of email
}

func newTestCoordinator(t *testing.T) *testCoordinator {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	iss := httptest.NewServer(mux)
	t.Cleanup(iss.Close)
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{
			"issuer": iss.URL, "authorization_endpoint": iss.URL + "/authorize", "token_endpoint": iss.URL + "/token",
			"jwks_uri": iss.URL + "/keys", "id_token_signing_alg_values_supported": []string{"ES256"},
		})
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	})

	// The public URL must be known before the coordinator starts.
	var h http.Handler
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	srv, err := coordinator.New(context.Background(), coordinator.Config{
		Listen:    "127.0.0.1:0",
		PublicURL: ts.URL,
		DataDir:   t.TempDir(),
		OIDC:      coordinator.OIDCConfig{Issuer: iss.URL, ClientID: "clustral", ClientSecret: "secret"},
		Admins:    []string{"admin@example.com"},
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	h = srv.Handler()
	t.Cleanup(func() {
		ts.CloseClientConnections()
		srv.Close()
		ts.Close()
	})

	// Endpoint discovery, so that Run starts its discovery loop too.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stunCtx, stopSTUN := context.WithCancel(context.Background())
	stunDone := make(chan struct{})
	go func() {
		defer close(stunDone)
		srv.ServeSTUN(stunCtx, pc)
	}()
	t.Cleanup(func() {
		stopSTUN()
		<-stunDone
	})

	c := &testCoordinator{t: t, url: ts.URL, srv: srv}
	c.idToken = func(email string) string {
		claims := jwt.MapClaims{"iss": iss.URL, "aud": "clustral", "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
			"sub": "sub-" + email, "email": email, "email_verified": true, "name": email}
		tok := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
		tok.Header["kid"] = "k1"
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return c
}

// call makes an API request and decodes the answer into out; an error
// answer fails the test.
func (c *testCoordinator) call(method, path, token string, body, out any) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, c.url+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		c.t.Fatalf("%s %s = %s %s", method, path, resp.Status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: decode: %v", method, path, err)
		}
	}
}

// admin signs the admin in and returns the session token.
func (c *testCoordinator) admin() string {
	c.t.Helper()
	var s proto.Session
	c.call("POST", proto.APIVersion+"/login/token", "", proto.TokenExchangeRequest{IDToken: c.idToken("admin@example.com")}, &s)
	return s.Token
}

// runGoroutines lists the goroutines running code that Run starts.
func runGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, fn := range []string{
			"agent.Run.", "agent.runMapStream", "agent.runDiscovery", "spool.(*Spool).Ship",
			"node.(*Node).RunRelay", "node.(*Stream).Run", "agent.(*Proxy).serve",
		} {
			if strings.Contains(g, "clustral/clustral/"+fn) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

func TestRunRegistersServesAndDrains(t *testing.T) {
	c := newTestCoordinator(t)
	admin := c.admin()
	var cl proto.CreateClusterResponse
	c.call("POST", proto.APIVersion+"/clusters", admin, proto.CreateClusterRequest{Name: "prod"}, &cl)

	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The map stream's goroutine is held up as it winds down, as a
	// goroutine may be: Run must wait for it all the same.
	held := &holdingTransport{RoundTripper: http.DefaultTransport.(*http.Transport).Clone(), path: proto.APIVersion + "/map",
		closed: make(chan struct{}), release: make(chan struct{})}
	auditDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			CoordinatorURL: c.url,
			JoinToken:      cl.JoinToken,
			HTTPClient:     &http.Client{Transport: held},
			Hostname:       "node-1",
			Upstream:       &rest.Config{Host: "https://127.0.0.1:1"},
			HealthListener: hl,
			AuditDir:       auditDir,
			Logger:         slog.New(slog.DiscardHandler),
		})
	}()

	health := "http://" + hl.Addr().String()
	get := func(path string) (int, string) {
		resp, err := http.Get(health + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testkit.WaitFor(t, "/readyz answering 200", func() bool {
		select {
		case err := <-done:
			t.Fatalf("Run returned before it was ready: %v", err)
		default:
		}
		st, _ := get("/readyz")
		return st == http.StatusOK
	})
	if st, body := get("/metrics"); st != http.StatusOK || !strings.Contains(body, `clustral_agent_certificate_expiry_timestamp_seconds{cluster="prod"}`) {
		t.Errorf("/metrics = %d, without the certificate expiry of cluster prod:\n%s", st, body)
	}
	var shown proto.Cluster
	testkit.WaitFor(t, "the coordinator showing the agent online", func() bool {
		c.call("GET", proto.APIVersion+"/clusters/prod", admin, nil, &shown)
		return len(shown.Agents) == 1 && shown.Agents[0].Online
	})
	if a := shown.Agents[0]; a.Hostname != "node-1" || len(a.Addresses) == 0 {
		t.Errorf("agent as the coordinator shows it = %+v", a)
	}

	cancel()
	<-held.closed
	select {
	case err := <-done:
		t.Fatalf("Run returned (%v) while the map stream it started was still running", err)
	case <-time.After(500 * time.Millisecond):
	}
	close(held.release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel = %v, want nil", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
	}
	// Everything Run started has stopped by the time it returns.
	if gs := runGoroutines(); len(gs) > 0 {
		t.Errorf("goroutines of Run still running after it returned:\n%s", strings.Join(gs, "\n\n"))
	}
	var after proto.Cluster
	c.call("GET", proto.APIVersion+"/clusters/prod", admin, nil, &after)
	if len(after.Agents) != 0 {
		t.Errorf("agents after Run returned = %+v, want none: it deregisters", after.Agents)
	}
	if st, _ := get("/healthz"); st != 0 {
		t.Errorf("/healthz after Run returned = %d, want the listener closed", st)
	}
	sp, err := spool.Open(spool.Options{Dir: auditDir})
	if err != nil {
		t.Fatalf("audit spool still locked after Run returned: %v", err)
	}
	sp.Close()
}

func TestRunRefusedJoinToken(t *testing.T) {
	c := newTestCoordinator(t)
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	err = Run(context.Background(), Config{
		CoordinatorURL: c.url,
		JoinToken:      "cjt_wrong",
		Upstream:       &rest.Config{Host: "https://127.0.0.1:1"},
		HealthListener: hl,
		AuditDir:       t.TempDir(),
		Logger:         slog.New(slog.DiscardHandler),
	})
	var ce *CoordinatorError
	if !errors.As(err, &ce) || ce.Problem.Status != http.StatusUnauthorized || ce.Problem.Code != proto.CodeInvalidJoinToken {
		t.Fatalf("Run with a wrong join token = %v, want a 401 %s *CoordinatorError", err, proto.CodeInvalidJoinToken)
	}
	if !strings.HasPrefix(err.Error(), "register agent: ") {
		t.Errorf("error %q does not say it is the registration", err)
	}
	hl.(*net.TCPListener).SetDeadline(time.Now().Add(time.Second))
	if _, err := hl.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("health listener after Run returned: Accept = %v, want it closed", err)
	}
}

// holdingTransport holds up the closing of every answer body to
// requests for path: it closes closed and returns only once release is
// closed.
type holdingTransport struct {
	http.RoundTripper
	path            string
	closed, release chan struct{}
	once            sync.Once
}

func (t *holdingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.RoundTripper.RoundTrip(r)
	if err == nil && r.URL.Path == t.path {
		resp.Body = &heldBody{ReadCloser: resp.Body, t: t}
	}
	return resp, err
}

type heldBody struct {
	io.ReadCloser
	t *holdingTransport
}

func (b *heldBody) Close() error {
	err := b.ReadCloser.Close()
	b.t.once.Do(func() { close(b.t.closed) })
	<-b.t.release
	return err
}
