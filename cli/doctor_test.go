package cli

import (
	"encoding/json"
	"errors"
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
