package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/clustral/clustral/agent/spool"
	"github.com/clustral/clustral/coordinator"
	"github.com/clustral/clustral/coordinator/coordinatortest"
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
		{"live view", func(c *Config) { c.Live = true }, ""},
		{"live view of secrets too", func(c *Config) { c.Live, c.LiveKinds = true, []string{"pods", "secrets"} }, ""},
		{"live view of an unknown kind", func(c *Config) { c.Live, c.LiveKinds = true, []string{"widgets"} }, `unknown kind "widgets"`},
		{"live user a login could be", func(c *Config) { c.Live, c.LiveUser = true, "viewer" }, "use a name under system:"},
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

// startCoordinator starts a real coordinator in-process
// (coordinatortest.Start) with admin@example.com its administrator, and
// serves its endpoint discovery, so that Run starts its discovery loop
// too.
func startCoordinator(t *testing.T) *coordinatortest.Coordinator {
	t.Helper()
	c := coordinatortest.Start(t, nil, func(cfg *coordinator.Config) { cfg.Admins = []string{"admin@example.com"} })
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stunCtx, stopSTUN := context.WithCancel(context.Background())
	stunDone := make(chan struct{})
	go func() {
		defer close(stunDone)
		c.ServeSTUN(stunCtx, pc)
	}()
	t.Cleanup(func() {
		stopSTUN()
		<-stunDone
	})
	return c
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
	c := startCoordinator(t)
	admin := c.Login("admin@example.com").Token
	var cl proto.CreateClusterResponse
	c.Do(admin, "POST", proto.APIVersion+"/clusters", proto.CreateClusterRequest{Name: "prod"}, &cl)

	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The map stream's goroutine is held up as it winds down, as a
	// goroutine may be: Run must wait for it all the same.
	held := &holdingTransport{RoundTripper: c.Client().Transport.(*http.Transport).Clone(), path: proto.APIVersion + "/map",
		closed: make(chan struct{}), release: make(chan struct{})}
	auditDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			CoordinatorURL: c.URL,
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
		c.Do(admin, "GET", proto.APIVersion+"/clusters/prod", nil, &shown)
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
	if err := testkit.RecvWithin(t, 20*time.Second, done, "Run to return after its context was cancelled"); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	// Everything Run started has stopped by the time it returns.
	if gs := runGoroutines(); len(gs) > 0 {
		t.Errorf("goroutines of Run still running after it returned:\n%s", strings.Join(gs, "\n\n"))
	}
	var after proto.Cluster
	c.Do(admin, "GET", proto.APIVersion+"/clusters/prod", nil, &after)
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
	c := startCoordinator(t)
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	err = Run(context.Background(), Config{
		CoordinatorURL: c.URL,
		JoinToken:      "cjt_wrong",
		HTTPClient:     c.Client(),
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
