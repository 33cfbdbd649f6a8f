package coordinator

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// scrape fetches GET /metrics and parses the text exposition.
func (e *testEnv) scrape() map[string]*dto.MetricFamily {
	e.t.Helper()
	resp, err := http.Get(e.ts.URL + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		e.t.Fatalf("GET /metrics = %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		e.t.Fatalf("parse /metrics: %v", err)
	}
	return mf
}

// value returns the value of the series of family name whose labels
// include want, failing if there is none.
func value(t *testing.T, mf map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	f := mf[name]
	if f == nil {
		t.Fatalf("no series %s", name)
	}
next:
	for _, m := range f.Metric {
		for k, v := range want {
			found := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, want)
	return 0
}

func TestMetrics(t *testing.T) {
	e := newTestEnv(t)
	mf := e.scrape()
	for _, name := range []string{
		"clustral_coordinator_logins_total", "clustral_coordinator_registrations_total",
		"clustral_coordinator_connected_nodes", "clustral_coordinator_map_deltas_sent_total",
		"go_goroutines", "process_cpu_seconds_total",
	} {
		if mf[name] == nil {
			t.Errorf("fresh coordinator lacks %s", name)
		}
	}
	if v := value(t, mf, "clustral_coordinator_logins_total", map[string]string{"method": "token", "result": "success"}); v != 0 {
		t.Errorf("logins before any = %v", v)
	}

	admin := e.login("admin@example.com")
	alice := e.login("alice@example.com", "dev")
	if status, _ := e.call("POST", "/api/v1/login/token", "", proto.TokenExchangeRequest{IDToken: "not-a-token"}, nil); status != http.StatusUnauthorized {
		t.Fatalf("bad token login = %d", status)
	}
	cl := e.createCluster(admin.Token, "prod")
	e.must("POST", "/api/v1/roles", admin.Token, proto.Role{Name: "viewer", Groups: []string{"viewers"}}, nil)
	var agent, dev proto.RegisterResponse
	e.must("POST", "/api/v1/agents", cl.JoinToken, proto.RegisterAgentRequest{PublicKey: newKey(t), CSR: newCSR(t)}, &agent)
	e.must("POST", "/api/v1/devices", alice.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}, &dev)
	am, dm := e.openMap(agent.NodeToken), e.openMap(dev.NodeToken)
	am.next()
	dm.next()
	e.must("POST", "/api/v1/assignments", admin.Token, proto.Assignment{User: "alice@example.com", Role: "viewer", Cluster: "prod"}, nil)
	am.next()
	dm.next()

	mf = e.scrape()
	tests := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"clustral_coordinator_logins_total", map[string]string{"method": "token", "result": "success"}, 2},
		{"clustral_coordinator_logins_total", map[string]string{"method": "token", "result": "failure"}, 1},
		{"clustral_coordinator_logins_total", map[string]string{"method": "browser", "result": "success"}, 0},
		{"clustral_coordinator_registrations_total", map[string]string{"kind": "agent"}, 1},
		{"clustral_coordinator_registrations_total", map[string]string{"kind": "device"}, 1},
		{"clustral_coordinator_connected_nodes", map[string]string{"kind": "agent"}, 1},
		{"clustral_coordinator_connected_nodes", map[string]string{"kind": "device"}, 1},
	}
	for _, tt := range tests {
		if got := value(t, mf, tt.name, tt.labels); got != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	// The assignment sent one delta to each side, at least; the map
	// streams' own connects announce the agent as online too. A stream
	// counts a delta once its write returns, which may be after the
	// client has read it.
	testkit.WaitFor(t, "map deltas sent to reach 2", func() bool {
		return value(t, e.scrape(), "clustral_coordinator_map_deltas_sent_total", nil) >= 2
	})

	// A closed stream leaves the gauge.
	dm.body.Close()
	testkit.WaitFor(t, "connected devices to drop to 0 after the stream closed", func() bool {
		return value(t, e.scrape(), "clustral_coordinator_connected_nodes", map[string]string{"kind": "device"}) == 0
	})
}

func TestBackupAPI(t *testing.T) {
	e := newTestEnv(t)
	admin := e.login("admin@example.com")
	alice := e.login("alice@example.com")
	e.must("POST", "/api/v1/clusters", admin.Token, proto.CreateClusterRequest{Name: "prod"}, nil)
	e.must("POST", "/api/v1/roles", admin.Token, proto.Role{Name: "viewer", Groups: []string{"viewers"}}, nil)

	get := func(token string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", e.ts.URL+"/api/v1/admin/backup", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	for _, tt := range []struct {
		name, token string
		want        int
	}{
		{"anonymous", "", http.StatusUnauthorized},
		{"not an admin", alice.Token, http.StatusForbidden},
	} {
		if resp := get(tt.token); resp.StatusCode != tt.want {
			t.Errorf("backup as %s = %s, want %d", tt.name, resp.Status, tt.want)
		}
	}

	// Writes go on while the snapshot streams.
	stop := testkit.Repeat(t, func(i int) bool {
		e.call("POST", "/api/v1/roles", admin.Token, proto.Role{Name: "load-" + string(rune('a'+i%26)) + time.Now().Format("150405.000000")[7:], Groups: []string{"g"}}, nil)
		return true
	})
	resp := get(admin.Token)
	body, err := io.ReadAll(resp.Body)
	stop()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("backup = %s, %v", resp.Status, err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "coordinator.db"), body, 0o600); err != nil {
		t.Fatal(err)
	}
	counts, err := store.Verify(filepath.Join(dir, "coordinator.db"))
	if err != nil {
		t.Fatal(err)
	}
	if counts[store.Clusters] != 1 || counts[store.Users] != 2 {
		t.Errorf("backup holds %v", counts)
	}
	// The snapshot starts a coordinator with the same mesh.
	restored, err := New(context.Background(), Config{DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Close()
	if restored.v6 != e.srv.v6 || !bytes.Equal(restored.ca.certPEM, e.srv.ca.certPEM) {
		t.Error("restored coordinator has another mesh CA or IPv6 prefix")
	}
	if restored.lookupCluster("prod") == nil || restored.lookupRole("viewer") == nil {
		t.Error("restored coordinator lacks cluster prod or role viewer")
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 with the given
// common name to dir and returns its cert and key paths.
func selfSigned(t *testing.T, dir, cn string) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM := testkit.ServerCert(t, cn)
	certFile, keyFile = filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// install copies a certificate pair over the served files, as a renewal
// does.
func install(t *testing.T, fromCert, fromKey, toCert, toKey string) {
	t.Helper()
	for from, to := range map[string]string{fromCert: toCert, fromKey: toKey} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReloadTLS(t *testing.T) {
	dir := t.TempDir()
	oldCert, oldKey := selfSigned(t, dir, "old")
	newCert, newKey := selfSigned(t, dir, "new")
	served, servedKey := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	install(t, oldCert, oldKey, served, servedKey)

	srv, err := New(context.Background(), Config{
		Listen: "127.0.0.1:0", DataDir: filepath.Join(dir, "data"),
		TLSCertFile: served, TLSKeyFile: servedKey, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	url := "https://" + serve(t, srv, "tcp") + "/healthz"

	open := testkit.OneConnClient()
	defer open.CloseIdleConnections()
	if cn, err := testkit.ServedCN(open, url); err != nil || cn != "old" {
		t.Fatalf("before reload: cn = %q, %v", cn, err)
	}

	// A bad pair (a key that does not match) keeps the old certificate.
	install(t, newCert, oldKey, served, servedKey)
	if err := srv.ReloadTLS(); err == nil {
		t.Fatal("reload of a mismatched pair succeeded")
	}
	if cn, err := testkit.ServedCN(testkit.OneConnClient(), url); err != nil || cn != "old" {
		t.Fatalf("after a failed reload: new connection sees %q, %v; want old", cn, err)
	}

	install(t, newCert, newKey, served, servedKey)
	if err := srv.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	if cn, err := testkit.ServedCN(testkit.OneConnClient(), url); err != nil || cn != "new" {
		t.Fatalf("after reload: new connection sees %q, %v; want new", cn, err)
	}
	// The connection opened before the reload is still the same one, and
	// still works.
	for range 3 {
		if cn, err := testkit.ServedCN(open, url); err != nil || cn != "old" {
			t.Fatalf("open connection after reload: cn = %q, %v; want the old connection to keep working", cn, err)
		}
	}
}

// TestMetricsListen: with a metrics address, monitoring is served there and
// the API no longer serves /metrics.
func TestMetricsListen(t *testing.T) {
	free := func() string {
		t.Helper()
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	metricsAddr := free()
	srv, err := New(context.Background(), Config{
		Listen: "127.0.0.1:0", MetricsListen: metricsAddr, DataDir: t.TempDir(),
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	apiAddr := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- srv.ListenAndServe(ctx, func(a net.Addr) { apiAddr <- a }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	var api string
	select {
	case a := <-apiAddr:
		api = a.String()
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	tests := []struct {
		addr, path string
		want       int
		body       string
	}{
		{metricsAddr, "/metrics", http.StatusOK, "clustral_coordinator_connected_nodes"},
		{metricsAddr, "/healthz", http.StatusOK, "ok"},
		{metricsAddr, "/readyz", http.StatusOK, ""},
		{metricsAddr, "/api/v1/info", http.StatusNotFound, ""},
		{api, "/metrics", http.StatusNotFound, ""},
		{api, "/healthz", http.StatusOK, "ok"},
	}
	for _, tt := range tests {
		resp, err := http.Get("http://" + tt.addr + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.want || !bytes.Contains(b, []byte(tt.body)) {
			t.Errorf("GET %s%s = %d %.80q, want %d with %q", tt.addr, tt.path, resp.StatusCode, b, tt.want, tt.body)
		}
	}
}
