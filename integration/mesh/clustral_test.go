package mesh

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

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

// startCoordinator starts a coordinator with a fresh data directory on
// coordPort (Dex's redirect URI names it), with admin as administrator.
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

// startAgent runs an agent for the cluster of joinToken with the
// least-privilege identity against the test apiserver.
func startAgent(t *testing.T, joinToken string) *harness.Agent {
	t.Helper()
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	if err := env.APIServer.WriteKubeconfig(kc, "agent", harness.AgentIdentity.Token); err != nil {
		t.Fatal(err)
	}
	a, err := harness.StartAgent(context.Background(), binary(t), dir, coordURL(), joinToken, kc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Proc.Stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", a.Proc.Tail(60))
		}
	})
	return a
}

// user is a harness.User bound to a test.
type user struct {
	*harness.User
	t *testing.T
}

func newUser(t *testing.T, d harness.DexUser) *user {
	t.Helper()
	u := &user{User: harness.NewUser(binary(t), t.TempDir(), d), t: t}
	t.Cleanup(func() {
		// Whatever happens, take the tunnel down.
		u.User.Down(context.Background())
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(u.Dir, "config", "profiles", "default", "up.log")); err == nil {
				t.Logf("%s up.log:\n%s", u.Email, lastLines(string(b), 40))
			}
		}
	})
	return u
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func (u *user) must(args ...string) string {
	u.t.Helper()
	out, _, err := u.Run(context.Background(), args...)
	if err != nil {
		u.t.Fatal(err)
	}
	return out
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

func (u *user) kubectl(args ...string) (harness.KubectlResult, error) {
	return u.kubectlEnv(nil, args...)
}

func (u *user) kubectlEnv(extraEnv []string, args ...string) (harness.KubectlResult, error) {
	k := u.Kubectl()
	k.Env = extraEnv
	return k.Run(context.Background(), args...)
}

func (u *user) api(method, path string, body, out any) {
	u.t.Helper()
	if err := u.API(context.Background(), coordURL(), method, path, body, out); err != nil {
		u.t.Fatal(err)
	}
}

// testMesh is a coordinator with one cluster "kind" and roles viewer
// (group clustral:viewers, bound to view) and editor (clustral:editors,
// bound to edit).
type testMesh struct {
	coord     *harness.Coordinator
	admin     *user
	joinToken string
}

func newMesh(t *testing.T) *testMesh {
	t.Helper()
	m := &testMesh{coord: startCoordinator(t), admin: newUser(t, admin)}
	m.admin.login()
	var cl proto.CreateClusterResponse
	m.admin.api("POST", "/api/v1/clusters", proto.CreateClusterRequest{Name: "kind"}, &cl)
	m.joinToken = cl.JoinToken
	m.admin.api("POST", "/api/v1/roles", proto.Role{Name: "viewer", Groups: []string{"clustral:viewers"}}, nil)
	m.admin.api("POST", "/api/v1/roles", proto.Role{Name: "editor", Groups: []string{"clustral:editors"}}, nil)
	return m
}

func (m *testMesh) assign(t *testing.T, who, role string) proto.Assignment {
	t.Helper()
	var a proto.Assignment
	m.admin.api("POST", "/api/v1/assignments", proto.Assignment{User: who, Role: role, Cluster: "kind"}, &a)
	return a
}
