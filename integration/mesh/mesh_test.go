package mesh

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// newUpUser starts a mesh with an agent and returns it with the user d
// logged in, holding role on the cluster and up, and that assignment.
func newUpUser(t *testing.T, d harness.DexUser, role string) (*harness.Mesh, *harness.TestUser, proto.Assignment) {
	t.Helper()
	m := suite.NewMeshWithAgent(t)
	u := suite.NewUser(t, d)
	u.MustLogin()
	asg := m.Assign(t, d.Email, role)
	u.MustUp()
	return m, u, asg
}

// newAliceAndBob starts a mesh with an agent and returns it with alice
// and bob logged in, holding aliceRole and bobRole on the cluster. Neither
// is up yet.
func newAliceAndBob(t *testing.T, aliceRole, bobRole string) (*harness.Mesh, *harness.TestUser, *harness.TestUser) {
	t.Helper()
	m := suite.NewMeshWithAgent(t)
	a, b := suite.NewUser(t, alice), suite.NewUser(t, bob)
	a.MustLogin()
	b.MustLogin()
	m.Assign(t, alice.Email, aliceRole)
	m.Assign(t, bob.Email, bobRole)
	return m, a, b
}

// TestIdentityAndRoles: two users, at the same time on two devices, with
// different roles, get different answers from the real apiserver's RBAC,
// and the cluster sees each as themselves with their role's groups.
func TestIdentityAndRoles(t *testing.T) {
	_, a, b := newAliceAndBob(t, "viewer", "editor")
	a.MustUp()
	b.MustUp()

	res, err := a.RunKubectl("auth", "whoami")
	if err != nil {
		dbg, _ := a.RunKubectl("get", "--raw", "/api", "-v=9")
		t.Fatalf("%v\ndebug: %s", err, dbg.Stderr)
	}
	for _, want := range []string{alice.Email, "clustral:viewers", "system:authenticated"} {
		if !strings.Contains(res.Stdout, want) {
			t.Errorf("alice whoami = %q, missing %q", res.Stdout, want)
		}
	}
	if strings.Contains(res.Stdout, "clustral-agent") {
		t.Errorf("whoami shows the agent's identity: %s", res.Stdout)
	}
	tests := []struct {
		who  *harness.TestUser
		args []string
		want string
	}{
		{a, []string{"auth", "can-i", "list", "pods", "-n", "default"}, "yes"},
		{a, []string{"auth", "can-i", "create", "configmaps", "-n", "default"}, "no"},
		{b, []string{"auth", "can-i", "create", "configmaps", "-n", "default"}, "yes"},
	}
	for _, tt := range tests {
		res, _ := tt.who.RunKubectl(tt.args...)
		if got := strings.TrimSpace(res.Stdout); got != tt.want {
			t.Errorf("%s: kubectl %v = %q (stderr %q), want %q", tt.who.Email, tt.args, got, res.Stderr, tt.want)
		}
	}
	if _, err := a.RunKubectl("create", "configmap", "x", "-n", "default"); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("alice create configmap: err = %v, want forbidden from the apiserver", err)
	}
	if _, err := b.RunKubectl("create", "configmap", "from-bob-"+strconv.FormatInt(time.Now().UnixNano(), 36), "-n", "default"); err != nil {
		t.Errorf("bob create configmap: %v", err)
	}
}

// TestNoRole: a user with no role on the cluster still gets its context,
// and kubectl prints the plain-text 403 naming the cluster and the way
// forward.
func TestNoRole(t *testing.T) {
	suite.NewMeshWithAgent(t)
	c := suite.NewUser(t, carol)
	c.MustLogin()
	c.MustUp()
	for _, args := range [][]string{
		{"get", "pods"},
		{"get", "--raw", "/version"},
	} {
		res, err := c.RunKubectl(args...)
		var ke *harness.KubectlError
		if !errors.As(err, &ke) {
			t.Fatalf("kubectl %v: err = %v, want a harness.Refusal", args, err)
		}
		for _, want := range []string{"Forbidden", "carol@example.com has no role on cluster 'kind'", "clustral access request --cluster kind --role <role>"} {
			if !strings.Contains(res.Stderr, want) {
				t.Errorf("kubectl %v: stderr = %q, want %q", args, res.Stderr, want)
			}
		}
	}
}
