package cli

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/clustral/clustral/cli/device"
	"github.com/clustral/clustral/pkg/atomicfile"
	"github.com/clustral/clustral/proto"
	"k8s.io/client-go/tools/clientcmd"
)

// TestDoctorFailures breaks one thing at a time and checks that doctor
// fails that check, with its own diagnosis and fix, and exits 1.
func TestDoctorFailures(t *testing.T) {
	tests := []struct {
		name       string
		breakIt    func(e *testEnv, u *fakeUp)
		check      string
		diagnosis  string
		fix        string
		wantPassed []string // checks that must still pass
	}{
		{"coordinator down", func(e *testEnv, _ *fakeUp) { e.real.CloseServer() },
			"tls", "nothing answers at", "check that the coordinator runs", []string{"dns", "tunnel", "socks5"}},
		{"coordinator not ready", func(e *testEnv, _ *fakeUp) { e.real.FailStore(errors.New("disk gone")) },
			"health", "not ready: 503", "coordinator's log", []string{"tls", "session"}},
		{"session expired", func(e *testEnv, _ *fakeUp) { e.login("alice@example.com", fixedNow.Add(-90*time.Minute)) },
			"session", "your session expired 1h30m ago", "clustral login https://", []string{"health", "tunnel"}},
		{"session revoked", func(e *testEnv, _ *fakeUp) {
			s, err := loadSession(e.dir)
			if err != nil {
				e.t.Fatal(err)
			}
			e.real.Do(s.Session.Token, http.MethodDelete, proto.APIVersion+"/session", nil, nil)
		},
			"session", "rejected your session", "clustral login", []string{"health"}},
		{"clock skew", func(e *testEnv, _ *fakeUp) { e.setRealNow(5 * time.Minute) },
			"clock", "your clock is 5m behind", "time sync", []string{"session"}},
		{"context deleted", func(e *testEnv, _ *fakeUp) {
			cfg, _ := clientcmd.LoadFromFile(e.kubeconfig)
			delete(cfg.Contexts, "clustral-staging")
			clientcmd.WriteToFile(*cfg, e.kubeconfig)
		}, "kubeconfig", "context clustral-staging is missing", "clustral kube login staging", []string{"tunnel", "socks5"}},
		{"current context on another port", func(e *testEnv, u *fakeUp) {
			u.set(func(u *fakeUp) { u.st.SOCKS = "127.0.0.1:1" })
		}, "kubeconfig", "but the tunnel listens on 127.0.0.1:1", "clustral kube login prod", []string{"tunnel"}},
		{"tunnel stopped", func(e *testEnv, u *fakeUp) {
			cmd := exec.Command("true")
			if err := cmd.Run(); err != nil {
				t.Skip(err)
			}
			u.set(func(u *fakeUp) { u.st.PID = cmd.Process.Pid }) // gone
		}, "tunnel", "stopped without cleaning up", "clustral down && clustral up", []string{"session"}},
		{"tunnel not running", func(e *testEnv, u *fakeUp) {
			os.Remove(filepath.Join(e.dir, device.StateFile))
		}, "tunnel", "clustral up is not running", "clustral up", []string{"session"}},
		{"socks credential wrong", func(e *testEnv, u *fakeUp) {
			u.set(func(u *fakeUp) { u.st.SOCKSPass = "stale" })
		}, "socks5", "refuses the credential", "clustral down && clustral up", []string{"tunnel"}},
		{"no handshake", func(e *testEnv, u *fakeUp) { u.set(func(u *fakeUp) { u.agents[0].LastHandshake = time.Time{} }) },
			"wireguard prod/n-agent1", "no WireGuard handshake", "UDP may be blocked", []string{"socks5"}},
		{"stale handshake", func(e *testEnv, u *fakeUp) {
			u.set(func(u *fakeUp) { u.agents[0].LastHandshake = fixedNow.Add(-10 * time.Minute) })
		},
			"wireguard prod/n-agent1", "was 10m ago", "check the agent", []string{"socks5"}},
		{"agent offline", func(e *testEnv, u *fakeUp) { u.set(func(u *fakeUp) { u.agents[0].Online = false }) },
			"wireguard prod/n-agent1", "offline at the coordinator", "kubectl -n clustral logs", []string{"socks5"}},
		{"mesh name does not resolve", func(e *testEnv, u *fakeUp) {
			u.set(func(u *fakeUp) { u.st.DNS = testDNSState(device.DNSResolvConf) })
			fakeLookup(e.t, nil, &net.DNSError{Err: "no such host", Name: "prod.clustral.internal", IsNotFound: true})
		}, "mesh dns", "prod.clustral.internal does not resolve through the system's resolver", "another program may have rewritten /etc/resolv.conf", []string{"socks5", "wireguard prod/n-agent1"}},
		{"mesh name answered by another resolver", func(e *testEnv, u *fakeUp) {
			u.set(func(u *fakeUp) { u.st.DNS = testDNSState(device.DNSResolved) })
			fakeLookup(e.t, []string{"192.0.2.1"}, nil)
		}, "mesh dns", "resolves to 192.0.2.1, not to an agent", "resolvectl status clustral0", []string{"socks5"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newRealEnv(t, nil)
			e.login("alice@example.com", fixedNow.Add(8*time.Hour))
			u := startFakeUp(e, "prod", "staging")
			tt.breakIt(e, u)

			code, out, errb := e.run("doctor", "-o", "json")
			if code != exitError {
				t.Errorf("exit %d, want %d; stderr: %s", code, exitError, errb)
			}
			if !strings.Contains(errb, "check(s) failed: "+tt.check) {
				t.Errorf("stderr does not name %q first: %s", tt.check, errb)
			}
			var r doctorReport
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if r.OK {
				t.Error("report says ok")
			}
			got := map[string]checkResult{}
			for _, c := range r.Checks {
				got[c.Name] = c
			}
			c, ok := got[tt.check]
			if !ok || c.Status != checkFail || !strings.Contains(c.Detail, tt.diagnosis) || !strings.Contains(c.Fix, tt.fix) {
				t.Errorf("check %s = %+v, want fail with %q, fix %q", tt.check, c, tt.diagnosis, tt.fix)
			}
			for _, name := range tt.wantPassed {
				if got[name].Status != checkOK {
					t.Errorf("check %s = %+v, want ok", name, got[name])
				}
			}
		})
	}
}

// TestDoctorMeshDNS: with the mesh DNS of --tun mode, doctor resolves a
// cluster's name as programs do and passes when the agent answers; after
// a crash it names the resolver change left behind.
func TestDoctorMeshDNS(t *testing.T) {
	e := newRealEnv(t, nil)
	e.login("alice@example.com", fixedNow.Add(8*time.Hour))
	u := startFakeUp(e, "prod")
	u.set(func(u *fakeUp) { u.st.DNS = testDNSState(device.DNSResolved) })
	fakeLookup(t, []string{"100.64.0.1"}, nil)
	code, out, errb := e.run("doctor")
	if code != 0 || !strings.Contains(out, "[ ok ] mesh dns: prod.clustral.internal resolves to 100.64.0.1 (*.clustral.internal at 100.64.0.2 (systemd-resolved, link clustral0))") {
		t.Fatalf("exit %d:\n%s%s", code, out, errb)
	}
	code, out, _ = e.run("status")
	if code != 0 || !strings.Contains(out, "Mesh DNS:     *.clustral.internal at 100.64.0.2") {
		t.Fatalf("status, exit %d:\n%s", code, out)
	}

	// The up is killed: its change is left behind.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Skip(err)
	}
	st := testDNSState(device.DNSResolvConf)
	st.PID = dead.Process.Pid
	if err := atomicfile.WriteJSON(filepath.Join(e.dir, device.DNSFile), st, 0o600); err != nil {
		t.Fatal(err)
	}
	u.set(func(u *fakeUp) { u.st.PID = dead.Process.Pid })
	_, out, _ = e.run("doctor")
	if !strings.Contains(out, "[FAIL] mesh dns: the system's resolver still points at the mesh DNS of a clustral up that is gone") || !strings.Contains(out, "fix: clustral down") {
		t.Fatalf("doctor after a crash:\n%s", out)
	}
	_, out, _ = e.run("status")
	if !strings.Contains(out, "left behind by a stopped clustral up") {
		t.Fatalf("status after a crash:\n%s", out)
	}
}

func testDNSState(m device.DNSMethod) *device.DNSState {
	st := &device.DNSState{Method: m, Server: "100.64.0.2", Domain: "clustral.internal", PID: os.Getpid()}
	if m == device.DNSResolved {
		st.Link = "clustral0"
	}
	return st
}

// fakeLookup makes the system's resolver answer addrs or err until the
// test ends.
func fakeLookup(t *testing.T, addrs []string, err error) {
	old := lookupHost
	t.Cleanup(func() { lookupHost = old })
	lookupHost = func(context.Context, string) ([]string, error) { return addrs, err }
}

// TestDoctorNotLoggedIn: with nothing configured doctor still runs and
// says to log in.
func TestDoctorNotLoggedIn(t *testing.T) {
	e := newBareEnv(t)
	code, out, _ := e.run("doctor")
	if code != exitError || !strings.Contains(out, "[FAIL] coordinator: no coordinator configured") || !strings.Contains(out, "fix: clustral login") {
		t.Errorf("exit %d, out:\n%s", code, out)
	}
}

// TestPickReplica: with several coordinator URLs, doctor checks the
// first replica that is ready and says how many are.
func TestPickReplica(t *testing.T) {
	ready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }))
	t.Cleanup(ready.Close)
	notReady := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }))
	t.Cleanup(notReady.Close)
	gone := httptest.NewServer(http.NotFoundHandler())
	down := gone.URL
	gone.Close()
	tests := []struct {
		name     string
		replicas []string
		want     string
		status   string
		detail   string
	}{
		{"all ready", []string{ready.URL, ready.URL}, ready.URL, checkOK, "all 2 coordinator replicas are ready"},
		{"first down", []string{down, notReady.URL, ready.URL}, ready.URL, checkWarn, "1 of 3 coordinator replicas are ready"},
		{"none ready", []string{down, notReady.URL}, down, checkFail, "none of the 2 coordinator replicas is ready"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r doctorReport
			got := pickReplica(t.Context(), &http.Client{Timeout: 5 * time.Second}, tt.replicas, &r)
			if got != tt.want {
				t.Errorf("picked %s, want %s", got, tt.want)
			}
			if len(r.Checks) != 1 || r.Checks[0].Name != "replicas" || r.Checks[0].Status != tt.status || !strings.Contains(r.Checks[0].Detail, tt.detail) {
				t.Errorf("checks = %+v, want one replicas check, %s, saying %q", r.Checks, tt.status, tt.detail)
			}
		})
	}
}

// TestStatusNamesReplica: status prints the replica that answered only
// when the coordinator names one.
func TestStatusNamesReplica(t *testing.T) {
	for _, tt := range []struct {
		v    statusView
		want string
	}{
		{statusView{User: "alice", Coordinator: "https://c0,https://c1", CoordinatorHealth: "ok", Replica: "vm-2-a1b2c3", ReplicaURL: "https://c1"}, "vm-2-a1b2c3 at https://c1"},
		{statusView{User: "alice", Coordinator: "https://c0", CoordinatorHealth: "ok"}, ""},
	} {
		var b strings.Builder
		tw := tabwriter.NewWriter(&b, 0, 2, 2, ' ', 0)
		printStatus(tw, tt.v)
		tw.Flush()
		if got := b.String(); tt.want != "" && !strings.Contains(got, tt.want) || tt.want == "" && strings.Contains(got, "Replica") {
			t.Errorf("status of %+v:\n%s\nwant a line %q", tt.v, got, tt.want)
		}
	}
}

// TestUpDNSFlags: --dns-method is checked before anything starts, and
// only makes sense with --tun.
func TestUpDNSFlags(t *testing.T) {
	e := newRealEnv(t, nil)
	e.login("alice@example.com", fixedNow.Add(8*time.Hour))
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"up", "--dns-method", "resolved"}, "--dns-method needs --tun"},
		{[]string{"up", "--tun", "--dns-method", "hosts"}, `unknown DNS method "hosts": use auto, resolved (systemd-resolved), resolv.conf or off`},
	} {
		code, out, errb := e.run(tt.args...)
		if code != exitUsage || !strings.Contains(errb, tt.want) {
			t.Errorf("%v: exit %d, %s%s; want exit %d with %q", tt.args, code, out, errb, exitUsage, tt.want)
		}
	}
}

// TestDownRestoresDNSAfterCrash: clustral down after a killed up takes
// the mesh DNS out of resolv.conf, keeping the rest of the file.
func TestDownRestoresDNSAfterCrash(t *testing.T) {
	e := newRealEnv(t, nil)
	e.login("alice@example.com", fixedNow.Add(8*time.Hour))
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Skip(err)
	}
	const orig = "nameserver 10.0.0.1\n"
	conf := filepath.Join(t.TempDir(), "resolv.conf")
	edited := "# clustral begin: mesh DNS, removed by clustral down\nnameserver 100.64.0.2\n# clustral end\n" + orig
	if err := os.WriteFile(conf, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	rec := map[string]any{"method": "resolv.conf", "server": "100.64.0.2", "domain": "clustral.internal", "pid": dead.Process.Pid,
		"resolv_conf": map[string]any{"file": conf, "original": orig}}
	if err := atomicfile.WriteJSON(filepath.Join(e.dir, device.DNSFile), rec, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errb := e.run("down")
	if code != 0 || !strings.Contains(out, "Restored the system's DNS: removed clustral's nameserver from "+conf) {
		t.Fatalf("down: exit %d, %s%s", code, out, errb)
	}
	if b, _ := os.ReadFile(conf); string(b) != orig {
		t.Fatalf("resolv.conf after down = %q, want %q", b, orig)
	}
	if device.LeftoverDNS(e.dir) != nil {
		t.Fatal("the record is still there after down")
	}
}
