package device

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

// fakeCoordinator answers the device's calls as the coordinator would,
// without a map: the map stream and the relay hang (lingerTransport), so
// the device stays "starting".
type fakeCoordinator struct {
	mu    sync.Mutex
	calls []string // "token method path"
}

func (f *fakeCoordinator) call(_ context.Context, token, method, path string, body, out any) error {
	f.mu.Lock()
	f.calls = append(f.calls, token+" "+method+" "+path)
	f.mu.Unlock()
	switch method + " " + path {
	case "POST " + proto.APIVersion + "/devices":
		req := body.(proto.RegisterDeviceRequest)
		if req.Hostname == "" || req.PublicKey == (proto.Key{}) {
			return errors.New("registration without a hostname or key")
		}
		*out.(*proto.RegisterResponse) = proto.RegisterResponse{
			NodeID: "dev-1", NodeToken: "node-token", MeshDomain: "clustral.internal",
			Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.9/32")},
			Prefixes:  []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")},
		}
	case "GET " + proto.APIVersion + "/whoami":
		*out.(*proto.Whoami) = proto.Whoami{}
	}
	return nil
}

func (f *fakeCoordinator) called(call string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.calls {
		if c == call {
			return true
		}
	}
	return false
}

func testConfig(t *testing.T, f *fakeCoordinator) Config {
	t.Helper()
	// A unix socket path must stay short.
	dir, err := os.MkdirTemp("", "dev")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return Config{
		Dir: dir, Coordinator: "http://coordinator.test", Token: "session-token", User: "alice@example.com",
		Call: f.call, HTTPClient: &http.Client{Transport: lingerTransport{}},
		Kubeconfig: filepath.Join(t.TempDir(), "kubeconfig"),
	}
}

// lingerTransport answers no request, and takes a while to give up once
// the request is cancelled, as a transport on a slow network may: a
// goroutine Run does not wait for is still running when Run returns. The
// map stream gives up first, so the relay outlives it.
type lingerTransport struct{}

func (lingerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	<-r.Context().Done()
	linger := 400 * time.Millisecond
	if strings.HasSuffix(r.URL.Path, "/map") {
		linger = 100 * time.Millisecond
	}
	time.Sleep(linger)
	return nil, r.Context().Err()
}

// deviceGoroutines lists the goroutines running code of this package or
// of node/mesh, other than the test's own.
func deviceGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "testing.tRunner") || strings.Contains(g, "device.TestRun") {
			continue
		}
		if strings.Contains(g, "clustral/cli/device.") || strings.Contains(g, "clustral/node/mesh.") {
			out = append(out, g)
		}
	}
	return out
}

// TestRunServesThenCleansUp: Run registers, serves the status socket
// with the published state, and on cancel removes its files,
// deregisters with the node token and leaves no goroutine behind.
func TestRunServesThenCleansUp(t *testing.T) {
	f := &fakeCoordinator{}
	cfg := testConfig(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()

	hc := StatusClient(cfg.Dir, 5*time.Second)
	defer hc.CloseIdleConnections()
	var status struct {
		State *State `json:"state"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := hc.Get("http://up/status")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&status)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("decode status: %v", err)
			}
			break
		}
		select {
		case err := <-done:
			t.Fatalf("Run returned %v before serving", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("status socket never answered: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // the socket appears when Run gets there; nothing to wait on
	}
	if st := status.State; st == nil || st.Status != "starting" || st.User != "alice@example.com" || st.NodeID != "dev-1" || st.SOCKS == "" || st.PID != os.Getpid() {
		t.Fatalf("status state = %+v", status.State)
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, KeyFile)); err != nil {
		t.Fatalf("device key while running: %v", err)
	}
	if !f.called("session-token POST " + proto.APIVersion + "/devices") {
		t.Fatal("the device did not register with the session token")
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil after cancel", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if g := deviceGoroutines(); len(g) > 0 {
		t.Fatalf("goroutines left after Run returned:\n%s", strings.Join(g, "\n\n"))
	}
	for _, f := range []string{KeyFile, SocketFile, StateFile} {
		if _, err := os.Stat(filepath.Join(cfg.Dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after Run returned: %v", f, err)
		}
	}
	if !f.called("node-token DELETE " + proto.APIVersion + "/nodes/self") {
		t.Error("the device did not deregister with its node token")
	}
}

// TestRunReturnsRegistrationError: the caller gets the registration's
// error itself, to render it.
func TestRunReturnsRegistrationError(t *testing.T) {
	refused := errors.New("refused")
	cfg := testConfig(t, &fakeCoordinator{})
	cfg.Call = func(context.Context, string, string, string, any, any) error { return refused }
	if err := Run(context.Background(), cfg); !errors.Is(err, refused) {
		t.Fatalf("Run = %v, want %v", err, refused)
	}
}

// TestRunNamesMissingConfig: a Config without a field Run needs is
// refused before anything is registered, naming the field.
func TestRunNamesMissingConfig(t *testing.T) {
	tests := []struct {
		field string
		unset func(*Config)
	}{
		{"Dir", func(c *Config) { c.Dir = "" }},
		{"Coordinator", func(c *Config) { c.Coordinator = "" }},
		{"Token", func(c *Config) { c.Token = "" }},
		{"User", func(c *Config) { c.User = "" }},
		{"Call", func(c *Config) { c.Call = nil }},
		{"HTTPClient", func(c *Config) { c.HTTPClient = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			f := &fakeCoordinator{}
			cfg := testConfig(t, f)
			tt.unset(&cfg)
			err := Run(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), "Config."+tt.field+" is not set") {
				t.Fatalf("Run = %v, want it to name Config.%s", err, tt.field)
			}
			if len(f.calls) > 0 {
				t.Fatalf("calls before the refusal: %v", f.calls)
			}
		})
	}
}
