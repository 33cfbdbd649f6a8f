// Package mesh tests clustral end to end: a real coordinator, agents and
// `clustral up` processes talking WireGuard over loopback UDP, Dex as the
// OIDC provider, a real kube-apiserver judging the impersonated identities,
// and the installed kubectl.
package mesh

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
	carol = harness.DexUser{Email: "carol@example.com", Password: "carol-pw"}
)

var suite *harness.MeshSuite

// TestMain runs the tests against one apiserver and Dex. Every mesh has
// the roles viewer (group clustral:viewers, bound to view) and editor
// (clustral:editors, bound to edit).
func TestMain(m *testing.M) {
	os.Exit(harness.MeshMain(m, harness.MeshOptions{
		Name:       "mesh",
		Users:      []harness.DexUser{admin, alice, bob, carol},
		Admin:      admin,
		GroupRoles: map[string]string{"clustral:viewers": "view", "clustral:editors": "edit"},
		Roles: []proto.Role{
			{Name: "viewer", Groups: []string{"clustral:viewers"}},
			{Name: "editor", Groups: []string{"clustral:editors"}},
		},
	}, func(s *harness.MeshSuite) { suite = s }))
}
