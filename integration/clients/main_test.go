// Package clients runs the Kubernetes clients platform teams use, helm and
// k9s, as users run them: against the kubeconfig context `clustral up`
// writes, through the mesh, against a real kube-apiserver (with KWOK's
// fake node serving pod logs).
package clients

import (
	"os"
	"testing"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// The static users in Dex.
var alice, bob = harness.Alice, harness.Bob

var suite *harness.MeshSuite

// TestMain runs the tests against one apiserver and Dex. Every mesh has
// the roles viewer and editor (see harness.ViewerRole).
func TestMain(m *testing.M) {
	os.Exit(harness.MeshMain(m, harness.MeshOptions{Name: "clients", Users: []harness.DexUser{alice, bob}}, func(s *harness.MeshSuite) { suite = s }))
}

// upWithRole starts a mesh with an agent and a new namespace, and returns
// them and d logged in and up, holding role on the mesh's cluster, or, if
// limited, a role "team" with role's groups limited to the namespace.
func upWithRole(t *testing.T, d harness.DexUser, role proto.Role, limited bool) (*harness.Mesh, string, *harness.TestUser) {
	t.Helper()
	m := suite.NewMeshWithAgent(t)
	ns := suite.NewNamespace(t)
	u := suite.NewUser(t, d)
	u.MustLogin()
	if limited {
		role = proto.Role{Name: "team", Groups: role.Groups, Restrictions: &proto.Restrictions{Namespaces: []string{ns}}}
		m.Admin.MustAPI("POST", "/api/v1/roles", role, nil)
	}
	m.Assign(t, d.Email, role.Name)
	u.MustUp()
	return m, ns, u
}
