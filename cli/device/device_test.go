package device

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

// fakeCoordinator answers the device's calls as the coordinator would,
// without a map: the map stream and the relay hang (lingerTransport), so
// the device stays "starting". It is the transport of the device's
// coordinator client.
type fakeCoordinator struct {
	refuse bool // refuse the registration with a 403 problem

	mu    sync.Mutex
	calls []string // "token method path"
}

func (f *fakeCoordinator) RoundTrip(r *http.Request) (*http.Response, error) {
	call := r.Method + " " + r.URL.Path
	switch call {
	case "POST " + proto.APIVersion + "/devices", "GET " + proto.APIVersion + "/whoami",
		"DELETE " + proto.APIVersion + "/nodes/self", "PUT " + proto.APIVersion + "/nodes/self/endpoints":
	default:
		return lingerTransport{}.RoundTrip(r)
	}
	if r.Body != nil {
		defer r.Body.Close()
	}
	f.mu.Lock()
	f.calls = append(f.calls, strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")+" "+call)
	f.mu.Unlock()
	status, out := http.StatusOK, any(nil)
	switch call {
	case "POST " + proto.APIVersion + "/devices":
		var req proto.RegisterDeviceRequest
		switch {
		case f.refuse:
			status, out = http.StatusForbidden, proto.Problem{Title: "Forbidden", Detail: "refused", Status: http.StatusForbidden}
		case json.NewDecoder(r.Body).Decode(&req) != nil || req.Hostname == "" || req.PublicKey == (proto.Key{}):
			status, out = http.StatusBadRequest, proto.Problem{Title: "registration without a hostname or key"}
		default:
			out = proto.RegisterResponse{
				NodeID: "dev-1", NodeToken: "node-token", MeshDomain: "clustral.internal",
				Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.9/32")},
				Prefixes:  []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")},
			}
		}
	case "GET " + proto.APIVersion + "/whoami":
		out = proto.Whoami{}
	default:
		status = http.StatusNoContent
	}
	var body []byte
	if out != nil {
		body, _ = json.Marshal(out)
	}
	return &http.Response{
		StatusCode: status, Status: fmt.Sprintf("%d %s", status, http.StatusText(status)),
		Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)), Request: r,
	}, nil
}

func (f *fakeCoordinator) called(call string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Contains(f.calls, call)
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
		Dir: dir, User: "alice@example.com",
		Coordinator: coordclient.New("http://coordinator.test", "session-token", &http.Client{Transport: f}),
		Kubeconfig:  filepath.Join(t.TempDir(), "kubeconfig"),
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
	cfg := testConfig(t, &fakeCoordinator{refuse: true})
	err := Run(context.Background(), cfg)
	var pe *coordclient.Error
	if !errors.As(err, &pe) || pe.Status != http.StatusForbidden || pe.Detail != "refused" {
		t.Fatalf("Run = %v, want the 403 problem", err)
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
		{"Coordinator", func(c *Config) { c.Coordinator = nil }},
		{"Coordinator", func(c *Config) { c.Coordinator = c.Coordinator.WithToken("") }},
		{"User", func(c *Config) { c.User = "" }},
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
