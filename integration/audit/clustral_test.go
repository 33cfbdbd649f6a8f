package audit

import (
	"context"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// binary returns the clustral binary under test, built once per package.
func binary(t testing.TB) string {
	t.Helper()
	if clustralBin == "" {
		b, err := harness.ClustralBinary(binDir)
		if err != nil {
			t.Fatal(err)
		}
		clustralBin = b
	}
	return clustralBin
}

func startCoordinator(t *testing.T) *harness.Coordinator {
	t.Helper()
	c, err := harness.StartCoordinator(context.Background(), binary(t), t.TempDir(), harness.CoordinatorOptions{
		Port: coordPort, Dex: env.Dex, ClientID: "clustral", ClientSecret: oidcSecret, Admins: []string{admin.Email},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			t.Logf("coordinator log:\n%s", c.Proc.Tail(40))
		}
	})
	return c
}

// agentFiles is what an agent needs besides its audit spool.
type agentFiles struct {
	dir, kubeconfig string
}

func newAgentFiles(t *testing.T) agentFiles {
	t.Helper()
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	if err := env.APIServer.WriteKubeconfig(kc, "agent", harness.AgentIdentity.Token); err != nil {
		t.Fatal(err)
	}
	return agentFiles{dir: dir, kubeconfig: kc}
}

// startAgent runs an agent whose audit spool is in auditDir.
func startAgent(t *testing.T, joinToken, auditDir string) *harness.Agent {
	t.Helper()
	f := newAgentFiles(t)
	a, err := harness.StartAgent(context.Background(), binary(t), f.dir, coordURL(), joinToken, f.kubeconfig,
		"--audit-dir", auditDir, "--rate-limit-qps", "-1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Proc.Stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", a.Proc.Tail(40))
		}
	})
	return a
}

type user struct {
	*harness.User
	t *testing.T
}

func newUser(t *testing.T, d harness.DexUser) *user {
	t.Helper()
	u := &user{User: harness.NewUser(binary(t), t.TempDir(), d), t: t}
	t.Cleanup(func() {
		u.User.Down(context.Background())
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(u.Dir, "config", "profiles", "default", "up.log")); err == nil {
				t.Logf("%s up.log (tail):\n%s", u.Email, tail(string(b), 30))
			}
		}
	})
	return u
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func (u *user) login() {
	u.t.Helper()
	if err := u.LoginWithToken(context.Background(), env.Dex, "clustral", oidcSecret, coordURL()); err != nil {
		u.t.Fatal(err)
	}
}

func (u *user) up() {
	u.t.Helper()
	if err := u.Up(context.Background()); err != nil {
		u.t.Fatal(err)
	}
}

func (u *user) api(method, path string, body, out any) {
	u.t.Helper()
	if err := u.API(context.Background(), coordURL(), method, path, body, out); err != nil {
		u.t.Fatal(err)
	}
}

// testMesh is a coordinator with cluster "kind" and role viewer (group
// clustral:viewers, bound to view), alice a viewer, logged in and up.
type testMesh struct {
	coord     *harness.Coordinator
	admin     *user
	alice     *user
	joinToken string
}

func newMesh(t *testing.T) *testMesh {
	t.Helper()
	m := &testMesh{coord: startCoordinator(t), admin: newUser(t, admin), alice: newUser(t, alice)}
	m.admin.login()
	var cl proto.CreateClusterResponse
	m.admin.api("POST", "/api/v1/clusters", proto.CreateClusterRequest{Name: "kind"}, &cl)
	m.joinToken = cl.JoinToken
	m.admin.api("POST", "/api/v1/roles", proto.Role{Name: "viewer", Groups: []string{"clustral:viewers"}}, nil)
	m.alice.login()
	m.admin.api("POST", "/api/v1/assignments", proto.Assignment{User: alice.Email, Role: "viewer", Cluster: "kind"}, nil)
	return m
}

// events returns every audit event matching q, oldest first.
func (m *testMesh) events(t *testing.T, q url.Values) []proto.AuditEvent {
	t.Helper()
	var out []proto.AuditEvent
	q.Set("order", "asc")
	q.Set("limit", "1000")
	for {
		var p proto.AuditPage
		m.admin.api("GET", "/api/v1/audit/events?"+q.Encode(), nil, &p)
		out = append(out, p.Events...)
		if len(p.Events) < 1000 {
			return out
		}
		q.Set("cursor", p.Next)
	}
}

// waitEvents polls until cond holds for the events matching q.
func (m *testMesh) waitEvents(t *testing.T, q url.Values, timeout time.Duration, cond func([]proto.AuditEvent) bool) []proto.AuditEvent {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		evs := m.events(t, cloneQuery(q))
		if cond(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			b, _ := json.Marshal(evs[max(0, len(evs)-3):])
			t.Fatalf("timed out after %s waiting for audit events (%d so far; last: %s)", timeout, len(evs), b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func cloneQuery(q url.Values) url.Values {
	c := url.Values{}
	for k, v := range q {
		c[k] = append([]string(nil), v...)
	}
	return c
}
