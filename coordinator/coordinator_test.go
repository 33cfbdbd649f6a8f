package coordinator

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

type testEnv struct {
	t    *testing.T
	iss  *fakeIssuer
	srv  *Server
	ts   *httptest.Server
	dir  string
	addr string
	// configure, if set, changes the configuration before each start.
	configure func(*Config)
	// st, if set, is the store instead of bbolt in dir (see
	// newReplicaEnvs).
	st store.Store
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	return newTestEnvWith(t, nil)
}

// newTestEnvWith is newTestEnv with configure applied to the
// configuration.
func newTestEnvWith(t *testing.T, configure func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{t: t, iss: newFakeIssuer(t), dir: t.TempDir(), configure: configure}
	e.start()
	return e
}

func (e *testEnv) start() {
	e.t.Helper()
	// The public URL must be known before the server starts, so reserve
	// the test server first and plug the handler in after.
	var h http.Handler
	e.ts = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	if e.addr != "" { // a restart keeps the public URL
		e.ts.Listener.Close()
		l, err := net.Listen("tcp", e.addr)
		if err != nil {
			e.t.Fatal(err)
		}
		e.ts.Listener = l
	}
	e.ts.Start()
	e.addr = e.ts.Listener.Addr().String()
	cfg := Config{
		Listen:    "127.0.0.1:0",
		PublicURL: e.ts.URL,
		DataDir:   e.dir,
		OIDC:      OIDCConfig{Issuer: e.iss.URL, ClientID: "clustral", ClientSecret: "secret"},
		Admins:    []string{"admin@example.com"},
		Logger:    slog.New(slog.DiscardHandler),
	}
	if e.configure != nil {
		e.configure(&cfg)
	}
	var srv *Server
	var err error
	if e.st != nil {
		srv, err = NewWithStore(context.Background(), cfg, e.st)
	} else {
		srv, err = New(context.Background(), cfg)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	h = srv.Handler()
	e.srv = srv
	e.t.Cleanup(e.stop)
}

func (e *testEnv) stop() {
	if e.ts != nil {
		e.ts.CloseClientConnections()
		e.srv.Close()
		e.ts.Close()
		e.ts = nil
	}
}

// call makes an API request and decodes a 2xx answer into out. It returns
// the status and, for errors, the problem document.
func (e *testEnv) call(method, path, token string, body, out any) (int, *proto.Problem) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, e.ts.URL+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 || resp.StatusCode == http.StatusAccepted {
		var p proto.Problem
		json.NewDecoder(resp.Body).Decode(&p)
		return resp.StatusCode, &p
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			e.t.Fatalf("%s %s: decode: %v", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// createCluster creates the cluster name as the administrator whose
// session token is token.
func (e *testEnv) createCluster(token, name string) proto.CreateClusterResponse {
	e.t.Helper()
	var cl proto.CreateClusterResponse
	e.must("POST", "/api/v1/clusters", token, proto.CreateClusterRequest{Name: name}, &cl)
	return cl
}

// registerAgent registers an agent named hostname (none if empty) with
// joinToken, a fresh WireGuard key and a certificate request.
func (e *testEnv) registerAgent(joinToken, hostname string) proto.RegisterResponse {
	e.t.Helper()
	var agent proto.RegisterResponse
	e.must("POST", "/api/v1/agents", joinToken, proto.RegisterAgentRequest{PublicKey: newKey(e.t), Hostname: hostname, CSR: newCSR(e.t)}, &agent)
	return agent
}

func (e *testEnv) must(method, path, token string, body, out any) {
	e.t.Helper()
	if status, p := e.call(method, path, token, body, out); p != nil {
		e.t.Fatalf("%s %s = %d %+v", method, path, status, p)
	}
}

// login signs email in by direct ID-token exchange.
func (e *testEnv) login(email string, groups ...string) proto.Session {
	e.t.Helper()
	e.iss.signIn(email, groups...)
	var s proto.Session
	e.must("POST", "/api/v1/login/token", "", proto.TokenExchangeRequest{IDToken: e.iss.token(e.t, "clustral", "", time.Hour)}, &s)
	return s
}

func newKey(t *testing.T) proto.Key {
	t.Helper()
	k := testkit.WireGuardKey(t)
	return proto.Key(k.PublicKey())
}

// newCSR returns a certificate request whose names the coordinator must
// ignore.
func newCSR(t *testing.T) string {
	t.Helper()
	csr, _ := testkit.CSR(t, "ignored", "evil.example.com")
	return csr
}

func TestTokenExchangeRejectsBadTokens(t *testing.T) {
	e := newTestEnv(t)
	e.iss.signIn("mallory@example.com")
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tests := []struct {
		name  string
		token string
	}{
		{"forged signature", e.iss.tokenWith(t, otherKey, "clustral", "", time.Hour)},
		{"expired", e.iss.token(t, "clustral", "", -time.Minute)},
		{"wrong audience", e.iss.token(t, "someone-else", "", time.Hour)},
		{"garbage", "not.a.jwt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, p := e.call("POST", "/api/v1/login/token", "", proto.TokenExchangeRequest{IDToken: tt.token}, nil)
			if status != http.StatusUnauthorized || p.Code != proto.CodeLoginFailed {
				t.Fatalf("= %d %+v, want 401 LOGIN_FAILED", status, p)
			}
		})
	}
	e.srv.mu.Lock()
	n := len(e.srv.users)
	e.srv.mu.Unlock()
	if n != 0 {
		t.Fatalf("refused tokens created %d users", n)
	}
}

func TestSessionTokenChecks(t *testing.T) {
	e := newTestEnv(t)
	s := e.login("alice@example.com")
	tampered := s.Token[:len(s.Token)-4] + "AAAA"
	for _, tok := range []string{"", "garbage", tampered} {
		if status, _ := e.call("GET", "/api/v1/whoami", tok, nil, nil); status != http.StatusUnauthorized {
			t.Errorf("whoami with %q = %d, want 401", tok, status)
		}
	}
	e.must("DELETE", "/api/v1/session", s.Token, nil, nil)
	if status, p := e.call("GET", "/api/v1/whoami", s.Token, nil, nil); status != http.StatusUnauthorized || p.Code != proto.CodeSessionExpired {
		t.Fatalf("whoami after logout = %d %+v", status, p)
	}
}

// TestSessionTokenCheckCached: a token whose check is cached (it
// answered once) is still refused once it expires by the server's clock,
// once its session is ended, and when tampered with.
func TestSessionTokenCheckCached(t *testing.T) {
	for _, tc := range []struct {
		name     string
		end      func(e *testEnv, s proto.Session)
		wantCode proto.ErrorCode
	}{
		{"expired", func(e *testEnv, s proto.Session) {
			later := time.Now().Add(25 * time.Hour)
			e.srv.now = func() time.Time { return later }
		}, proto.CodeSessionExpired},
		{"logged out", func(e *testEnv, s proto.Session) {
			e.must("DELETE", "/api/v1/session", s.Token, nil, nil)
		}, proto.CodeSessionExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			s := e.login("alice@example.com")
			e.must("GET", "/api/v1/whoami", s.Token, nil, nil) // checked, and cached
			if _, ok := e.srv.verified.Get(s.Token); !ok {
				t.Fatal("a token that answered is not cached")
			}
			tampered := s.Token[:len(s.Token)-4] + "AAAA"
			if status, _ := e.call("GET", "/api/v1/whoami", tampered, nil, nil); status != http.StatusUnauthorized {
				t.Errorf("whoami with the cached token tampered = %d, want 401", status)
			}
			tc.end(e, s)
			if status, p := e.call("GET", "/api/v1/whoami", s.Token, nil, nil); status != http.StatusUnauthorized || p.Code != tc.wantCode {
				t.Errorf("whoami after the session %s = %d %+v, want 401 %s", tc.name, status, p, tc.wantCode)
			}
		})
	}
}

func TestAdminAPIRefusesNonAdmins(t *testing.T) {
	e := newTestEnv(t)
	bob := e.login("bob@example.com")
	for _, c := range []struct{ method, path string }{
		{"GET", "/api/v1/clusters"}, {"POST", "/api/v1/clusters"},
		{"GET", "/api/v1/roles"}, {"POST", "/api/v1/roles"},
		{"GET", "/api/v1/assignments"}, {"POST", "/api/v1/assignments"},
		{"DELETE", "/api/v1/assignments/x"}, {"GET", "/api/v1/users"},
	} {
		status, p := e.call(c.method, c.path, bob.Token, map[string]string{"name": "x"}, nil)
		if status != http.StatusForbidden || p.Code != proto.CodeForbidden || !strings.Contains(p.Title, "not an administrator") {
			t.Errorf("%s %s = %d %+v, want 403 FORBIDDEN", c.method, c.path, status, p)
		}
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	e := newTestEnv(t)
	admin := e.login("admin@example.com")
	big := strings.Repeat("x", proto.MaxBodyBytes+10)
	tests := []struct {
		name   string
		path   string
		body   any
		status int
		code   proto.ErrorCode
	}{
		{"bad cluster name", "/api/v1/clusters", proto.CreateClusterRequest{Name: "Prod Cluster"}, 400, proto.CodeBadRequest},
		{"oversized body", "/api/v1/clusters", proto.CreateClusterRequest{Name: big}, 413, proto.CodeTooLarge},
		{"role without groups", "/api/v1/roles", proto.Role{Name: "empty"}, 400, proto.CodeBadRequest},
		{"assignment to nobody", "/api/v1/assignments", proto.Assignment{Role: "x", Cluster: "y"}, 400, proto.CodeBadRequest},
		{"assignment of unknown user", "/api/v1/assignments", proto.Assignment{User: "ghost", Role: "x", Cluster: "y"}, 404, proto.CodeNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, p := e.call("POST", tt.path, admin.Token, tt.body, nil)
			if status != tt.status || p.Code != tt.code {
				t.Fatalf("= %d %+v, want %d %s", status, p, tt.status, tt.code)
			}
		})
	}
	e.srv.mu.Lock()
	defer e.srv.mu.Unlock()
	if len(e.srv.clusters)+len(e.srv.roles)+len(e.srv.assignments) != 0 {
		t.Fatal("bad input changed state")
	}
}

// mapStream reads a node's map stream.
type mapStream struct {
	t    *testing.T
	msgs chan proto.MapMessage
	body io.Closer
}

func (e *testEnv) openMap(token string) *mapStream {
	e.t.Helper()
	req, _ := http.NewRequest("GET", e.ts.URL+"/api/v1/map", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		e.t.Fatalf("map stream = %d", resp.StatusCode)
	}
	ms := &mapStream{t: e.t, msgs: make(chan proto.MapMessage, 64), body: resp.Body}
	go func() {
		defer close(ms.msgs)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 4<<20)
		for sc.Scan() {
			var m proto.MapMessage
			if json.Unmarshal(sc.Bytes(), &m) == nil && !m.KeepAlive {
				ms.msgs <- m
			}
		}
	}()
	e.t.Cleanup(func() { resp.Body.Close() })
	return ms
}

func (ms *mapStream) next() proto.MapMessage {
	ms.t.Helper()
	select {
	case m, ok := <-ms.msgs:
		if !ok {
			ms.t.Fatal("map stream ended")
		}
		return m
	case <-time.After(5 * time.Second):
		ms.t.Fatal("no map message within 5s")
	}
	panic("unreachable")
}

func TestMeshRegistrationAndMapDeltas(t *testing.T) {
	e := newTestEnv(t)
	admin := e.login("admin@example.com")
	alice := e.login("alice@example.com", "dev")

	cl := e.createCluster(admin.Token, "prod")
	e.must("POST", "/api/v1/roles", admin.Token, proto.Role{Name: "viewer", Groups: []string{"viewers"}}, nil)

	// Agent registration: bad token, then good.
	agentKey := newKey(t)
	if status, p := e.call("POST", "/api/v1/agents", "cjt_wrong", proto.RegisterAgentRequest{PublicKey: agentKey, CSR: newCSR(t)}, nil); status != 401 || p.Code != proto.CodeInvalidJoinToken {
		t.Fatalf("agent with bad token = %d %+v", status, p)
	}
	var agent proto.RegisterResponse
	e.must("POST", "/api/v1/agents", cl.JoinToken, proto.RegisterAgentRequest{PublicKey: agentKey, Hostname: "node-1", CSR: newCSR(t)}, &agent)
	if len(agent.Addresses) != 2 || agent.NodeToken == "" {
		t.Fatalf("agent registration = %+v", agent)
	}
	b, _ := pem.Decode([]byte(agent.Certificate))
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.DNSNames) != 1 || cert.DNSNames[0] != "prod.clustral.internal" || len(cert.IPAddresses) != 2 {
		t.Fatalf("agent cert names = %v %v; the CSR's names must be ignored", cert.DNSNames, cert.IPAddresses)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(agent.CABundle))
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "prod.clustral.internal"}); err != nil {
		t.Fatalf("agent cert does not chain to the mesh CA: %v", err)
	}

	devKey := newKey(t)
	var dev proto.RegisterResponse
	e.must("POST", "/api/v1/devices", alice.Token, proto.RegisterDeviceRequest{PublicKey: devKey, Hostname: "laptop"}, &dev)
	if status, _ := e.call("POST", "/api/v1/devices", alice.Token, proto.RegisterDeviceRequest{PublicKey: devKey}, nil); status != http.StatusConflict {
		t.Fatalf("duplicate key registration = %d, want 409", status)
	}

	am := e.openMap(agent.NodeToken)
	dm := e.openMap(dev.NodeToken)
	snapA, snapD := am.next(), dm.next()
	if !snapA.Snapshot || snapA.Version != 1 || len(snapA.Peers) != 0 || snapA.MeshDomain != "clustral.internal" || snapA.CABundle == "" {
		t.Fatalf("agent snapshot = %+v", snapA)
	}
	if !snapD.Snapshot || len(snapD.Peers) != 0 || snapD.Self.Key != devKey {
		t.Fatalf("device snapshot = %+v", snapD)
	}

	// Assign alice: each side gets the other, the agent with alice's roles.
	var asg proto.Assignment
	e.must("POST", "/api/v1/assignments", admin.Token, proto.Assignment{User: "alice@example.com", Role: "viewer", Cluster: "prod"}, &asg)
	da := am.next()
	if da.Version != 2 || len(da.Peers) != 1 || da.Peers[0].Key != devKey {
		t.Fatalf("agent delta = %+v", da)
	}
	id := da.Peers[0].Identity
	if id == nil || id.Login != "alice@example.com" || len(id.Roles) != 1 || id.Roles[0].Role != "viewer" || id.Roles[0].Groups[0] != "viewers" {
		t.Fatalf("identity in agent map = %+v", id)
	}
	if got := da.Peers[0].Addresses; len(got) != 2 || got[0] != dev.Addresses[0] {
		t.Fatalf("device addresses in agent map = %v, want exactly %v", got, dev.Addresses)
	}
	dd := dm.next()
	if dd.Version != 2 || len(dd.Peers) != 1 || dd.Peers[0].Key != agentKey || dd.Peers[0].Cluster != "prod" || !dd.Peers[0].Online {
		t.Fatalf("device delta = %+v", dd)
	}
	if dd.Peers[0].Identity != nil {
		t.Fatal("a device must not see identities")
	}

	var who proto.Whoami
	e.must("GET", "/api/v1/whoami", alice.Token, nil, &who)
	if len(who.Clusters) != 1 || who.Clusters[0].Name != "prod" {
		t.Fatalf("whoami clusters = %+v", who.Clusters)
	}

	// Unassign: both sides drop the other.
	e.must("DELETE", "/api/v1/assignments/"+asg.ID, admin.Token, nil, nil)
	if m := am.next(); len(m.Removed) != 1 || m.Removed[0] != devKey || m.Version != 3 {
		t.Fatalf("agent removal = %+v", m)
	}
	if m := dm.next(); len(m.Removed) != 1 || m.Removed[0] != agentKey {
		t.Fatalf("device removal = %+v", m)
	}

	// Logout removes the device from the mesh and ends its stream.
	e.must("POST", "/api/v1/assignments", admin.Token, proto.Assignment{Group: "dev", Role: "viewer", Cluster: "prod"}, nil)
	if m := am.next(); len(m.Peers) != 1 || m.Peers[0].Identity.Roles[0].Source != "group:dev" {
		t.Fatalf("group assignment delta = %+v", m)
	}
	dm.next()
	e.must("DELETE", "/api/v1/session", alice.Token, nil, nil)
	if m := am.next(); len(m.Removed) != 1 || m.Removed[0] != devKey {
		t.Fatalf("after logout agent got %+v", m)
	}
	select {
	case _, ok := <-dm.msgs:
		if ok {
			t.Fatal("device stream still open after logout")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("device stream not closed after logout")
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	e := newTestEnv(t)
	admin := e.login("admin@example.com")
	cl := e.createCluster(admin.Token, "prod")
	agent := e.registerAgent(cl.JoinToken, "")

	e.stop()
	e.start()
	var clusters []proto.Cluster
	e.must("GET", "/api/v1/clusters", admin.Token, nil, &clusters)
	if len(clusters) != 1 || len(clusters[0].Agents) != 1 || clusters[0].Agents[0].Addresses[0] != agent.Addresses[0] {
		t.Fatalf("after restart clusters = %+v", clusters)
	}
	// The session and the join token still work; the address pool still
	// knows the agent's address.
	e.registerAgent(cl.JoinToken, "")
	m := e.openMap(agent.NodeToken).next()
	if !m.Snapshot || m.Self.Addresses[0] != agent.Addresses[0] {
		t.Fatalf("after restart snapshot = %+v", m)
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"plain http off loopback", Config{Listen: "0.0.0.0:443"}, "not loopback and no TLS"},
		{"half TLS", Config{TLSCertFile: "c.pem"}, "needs both"},
		{"http public url", Config{PublicURL: "http://clustral.example.com"}, "plain HTTP"},
		{"tiny v4", Config{IPv4Prefix: mustPrefix("100.64.0.0/30")}, "at least a /24"},
		{"issuer without client", Config{OIDC: OIDCConfig{Issuer: "https://idp"}}, "client id"},
		{"checkpoint interval too short", Config{AuditCheckpointInterval: time.Millisecond}, "audit checkpoint interval"},
		{"unknown store", Config{Store: "postgres"}, "use --store bolt"},
		{"etcd without endpoints", Config{Store: StoreEtcd}, "--etcd-endpoints"},
		{"etcd endpoint not a URL", Config{Store: StoreEtcd, Etcd: store.EtcdConfig{Endpoints: []string{"etcd-0:2379"}}}, "scheme://host:port"},
		{"etcd cert without key", Config{Store: StoreEtcd, Etcd: store.EtcdConfig{Endpoints: []string{"https://etcd-0:2379"}, CertFile: "c.pem"}}, "--etcd-key"},
		{"etcd endpoints with bolt", Config{Etcd: store.EtcdConfig{Endpoints: []string{"https://etcd-0:2379"}}}, "--store etcd"},
		{"audit export over plain syslog", Config{AuditExport: []string{"syslog://siem:514"}}, "syslog+tls://"},
		{"audit export token in URL", Config{AuditExport: []string{"otlp+https://u:p@otel"}}, "headers-file="},
		{"replica listen on bolt", Config{ReplicaListen: "127.0.0.1:7947"}, "--store etcd"},
		{"replica advertise alone", Config{ReplicaAdvertise: "10.0.0.11:7947"}, "without --replica-listen"},
		{"replica listen not host:port", Config{Store: StoreEtcd, Etcd: etcdOne, ReplicaListen: "7947"}, "not host:port"},
		{"replica listen on every address, nothing advertised", Config{Store: StoreEtcd, Etcd: etcdOne, ReplicaListen: ":7947"}, "--replica-advertise"},
		{"replica listen on 0.0.0.0, nothing advertised", Config{Store: StoreEtcd, Etcd: etcdOne, ReplicaListen: "0.0.0.0:7947"}, "--replica-advertise"},
		{"replica advertise unspecified", Config{Store: StoreEtcd, Etcd: etcdOne, ReplicaListen: ":7947", ReplicaAdvertise: "0.0.0.0:7947"}, "this replica's own address"},
		{"replica advertise without port", Config{Store: StoreEtcd, Etcd: etcdOne, ReplicaListen: ":7947", ReplicaAdvertise: "10.0.0.11"}, "this replica's own address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.withDefaults()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
	if _, err := (Config{}).withDefaults(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	for _, ok := range []Config{
		{Store: StoreEtcd, Etcd: etcdOne, ReplicaListen: "10.0.0.11:7947"},
		{Store: StoreEtcd, Etcd: etcdOne, ReplicaListen: ":7947", ReplicaAdvertise: "coordinator-0.example.com:7947"},
	} {
		if _, err := ok.withDefaults(); err != nil {
			t.Errorf("--replica-listen %s --replica-advertise %q: %v", ok.ReplicaListen, ok.ReplicaAdvertise, err)
		}
	}
}

// etcdOne is a valid etcd configuration for configuration tests.
var etcdOne = store.EtcdConfig{Endpoints: []string{"http://127.0.0.1:2379"}}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestRequestIDs(t *testing.T) {
	e := newTestEnv(t)
	for _, tt := range []struct {
		sent   string
		keepIt bool
	}{
		{"", false},
		{"cli-0123456789", true},
		{"bad id with spaces", false},
	} {
		req, _ := http.NewRequest("GET", e.ts.URL+"/api/v1/info", nil)
		if tt.sent != "" {
			req.Header.Set(proto.HeaderRequestID, tt.sent)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		got := resp.Header.Get(proto.HeaderRequestID)
		if got == "" || (got == tt.sent) != tt.keepIt {
			t.Errorf("sent %q, answer carries %q", tt.sent, got)
		}
	}
}

// newBareServer is a coordinator without an identity provider, its store
// in tb's temporary directory, closed when tb ends: enough for what needs
// no login.
func newBareServer(tb testing.TB) *Server {
	tb.Helper()
	s, err := New(context.Background(), Config{Listen: "127.0.0.1:0", PublicURL: "http://127.0.0.1:1", DataDir: tb.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// serve serves s on a loopback port until tb ends, and returns the
// port's address: on "udp" its endpoint discovery, on "tcp" its API
// through Serve, as the coordinator command does. When tb ends it stops
// serving, and fails tb if serving returned an error.
func serve(tb testing.TB, s *Server, network string) string {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var addr string
	switch network {
	case "udp":
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		addr = pc.LocalAddr().String()
		go func() { done <- s.ServeSTUN(ctx, pc) }()
	default:
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		addr = l.Addr().String()
		go func() { done <- s.Serve(ctx, l) }()
	}
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("serve: %v", err)
		}
	})
	return addr
}

// TestSessionsListAndEnd: a user sees their own sessions only, marked
// current, and ends one by its id with the devices under it; another
// user's id is unknown to them.
func TestSessionsListAndEnd(t *testing.T) {
	e := newTestEnv(t)
	first := e.login("alice@example.com")
	second := e.login("alice@example.com")
	bob := e.login("bob@example.com")
	e.must("POST", "/api/v1/devices", first.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}, nil)

	var list []proto.SessionInfo
	e.must("GET", "/api/v1/sessions", second.Token, nil, &list)
	if len(list) != 2 {
		t.Fatalf("alice lists %d sessions, want her 2: %+v", len(list), list)
	}
	var other proto.SessionInfo
	for _, s := range list {
		if s.Current {
			continue
		}
		other = s
	}
	if other.ID == "" || other.Devices != 1 || list[0].Current == list[1].Current {
		t.Fatalf("sessions %+v: want one current and the other with its device", list)
	}
	if status, p := e.call("DELETE", "/api/v1/sessions/"+other.ID, bob.Token, nil, nil); status != http.StatusNotFound {
		t.Errorf("bob ending alice's session = %d %+v, want 404", status, p)
	}
	e.must("DELETE", "/api/v1/sessions/"+other.ID, second.Token, nil, nil)
	if status, _ := e.call("GET", "/api/v1/whoami", first.Token, nil, nil); status != http.StatusUnauthorized {
		t.Errorf("the ended session still answers: %d", status)
	}
	var devs []proto.Device
	e.must("GET", "/api/v1/devices", second.Token, nil, &devs)
	if len(devs) != 0 {
		t.Errorf("the ended session's device is still listed: %+v", devs)
	}
	ev := e.waitAudit(proto.AuditSessionEnded)
	if ev.Actor != "alice@example.com" || ev.Metadata["devices"] != "1" {
		t.Errorf("audit event %+v, want alice's with devices 1", ev)
	}
}

// TestRouteAuthentication holds the route table's wrappers to what they
// say: every route but the public ones refuses a caller without a
// credential, the admin routes refuse a user who is not an administrator
// (and the user routes let them through), and the agent route refuses a
// device.
func TestRouteAuthentication(t *testing.T) {
	e := newTestEnv(t)
	bob := e.login("bob@example.com")
	var dev proto.RegisterResponse
	e.must("POST", "/api/v1/devices", bob.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}, &dev)

	const v = proto.APIVersion
	type route struct{ method, path string }
	public := []route{
		{"GET", "/healthz"}, {"GET", "/readyz"}, {"GET", v + "/info"}, {"GET", proto.RelayPath + "/stats"},
	}
	user := []route{
		{"GET", v + "/whoami"}, {"GET", v + "/devices"}, {"GET", v + "/sessions"}, {"GET", v + "/access-requests"}, {"GET", v + "/audit/events"},
	}
	admin := []route{
		{"GET", v + "/admin/backup"},
		{"GET", v + "/clusters"}, {"POST", v + "/clusters"}, {"GET", v + "/clusters/x"}, {"PUT", v + "/clusters/x/labels"},
		{"POST", v + "/clusters/x/rotate-token"}, {"DELETE", v + "/clusters/x"},
		{"GET", v + "/roles"}, {"POST", v + "/roles"}, {"GET", v + "/roles/x"}, {"PUT", v + "/roles/x"}, {"DELETE", v + "/roles/x"},
		{"GET", v + "/assignments"}, {"POST", v + "/assignments"}, {"DELETE", v + "/assignments/x"},
		{"GET", v + "/users"}, {"GET", v + "/users/x"}, {"POST", v + "/users/x/disable"},
		{"GET", v + "/audit/verify"}, {"POST", v + "/audit/verify"}, {"POST", v + "/audit/checkpoints"},
	}
	others := []route{
		{"DELETE", v + "/session"}, {"DELETE", v + "/sessions/x"}, {"DELETE", v + "/devices/x"}, {"POST", v + "/access-requests"}, {"POST", v + "/access-requests/x/approve"},
		{"POST", v + "/devices"}, {"POST", v + "/agents"},
		{"DELETE", v + "/nodes/self"}, {"PUT", v + "/nodes/self/endpoints"}, {"GET", v + "/map"}, {"GET", proto.RelayPath},
		{"POST", v + "/audit/events"},
	}

	for _, r := range public {
		if status, p := e.call(r.method, r.path, "", nil, nil); status != http.StatusOK {
			t.Errorf("public %s %s without a credential = %d %+v, want 200", r.method, r.path, status, p)
		}
	}
	for _, list := range [][]route{user, admin, others} {
		for _, r := range list {
			if status, p := e.call(r.method, r.path, "", nil, nil); status != http.StatusUnauthorized {
				t.Errorf("%s %s without a credential = %d %+v, want 401", r.method, r.path, status, p)
			}
		}
	}
	for _, r := range admin {
		if status, p := e.call(r.method, r.path, bob.Token, nil, nil); status != http.StatusForbidden || p.Code != proto.CodeForbidden {
			t.Errorf("%s %s by a user who is not an administrator = %d %+v, want 403", r.method, r.path, status, p)
		}
	}
	for _, r := range user {
		if status, p := e.call(r.method, r.path, bob.Token, nil, nil); status != http.StatusOK {
			t.Errorf("%s %s by a user = %d %+v, want 200", r.method, r.path, status, p)
		}
	}
	if status, p := e.call("POST", v+"/audit/events", dev.NodeToken, proto.AuditBatch{Source: "x"}, nil); status != http.StatusForbidden {
		t.Errorf("audit events from a device = %d %+v, want 403", status, p)
	}
}
