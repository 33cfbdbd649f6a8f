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
var (
	admin = harness.DexUser{Email: "admin@example.com", Password: "admin-pw", Groups: []string{"platform"}}
	alice = harness.DexUser{Email: "alice@example.com", Password: "alice-pw", Groups: []string{"dev"}}
	bob   = harness.DexUser{Email: "bob@example.com", Password: "bob-pw", Groups: []string{"ops"}}
)

var suite *harness.MeshSuite

// TestMain runs the tests against one apiserver and Dex. Every mesh has
// the roles viewer (group clustral:viewers, bound to view) and editor
// (clustral:editors, bound to edit).
func TestMain(m *testing.M) {
	os.Exit(harness.MeshMain(m, harness.MeshOptions{
		Name:       "clients",
		Users:      []harness.DexUser{admin, alice, bob},
		Admin:      admin,
		GroupRoles: map[string]string{"clustral:viewers": "view", "clustral:editors": "edit"},
		Roles: []proto.Role{
			{Name: "viewer", Groups: []string{"clustral:viewers"}},
			{Name: "editor", Groups: []string{"clustral:editors"}},
		},
	}, func(s *harness.MeshSuite) { suite = s }))
}
