// Package access tests clustral's access management end to end: roles
// with restrictions and time windows, assignments to users and OIDC
// groups, just-in-time requests and their approval, expiry and
// revocation, and the administrators' API, through the clustral CLI and
// kubectl against a real coordinator, agent, Dex and kube-apiserver.
package access

import (
	"os"
	"testing"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// The static users in Dex. bob is in "ops", the approver group of the
// role editor; dave joins "sre" in TestGroupAssignment.
var (
	admin = harness.DexUser{Email: "admin@example.com", Password: "admin-pw", Groups: []string{"platform"}}
	alice = harness.DexUser{Email: "alice@example.com", Password: "alice-pw", Groups: []string{"dev"}}
	bob   = harness.DexUser{Email: "bob@example.com", Password: "bob-pw", Groups: []string{"ops"}}
	carol = harness.DexUser{Email: "carol@example.com", Password: "carol-pw"}
	dave  = harness.DexUser{Email: "dave@example.com", Password: "dave-pw", Groups: []string{"dev"}}
)

var dexUsers = []harness.DexUser{admin, alice, bob, carol, dave}

var suite *harness.MeshSuite

// TestMain runs the tests against one apiserver and Dex. Every mesh has
// the roles viewer (group clustral:viewers, bound to view) and editor
// (clustral:editors, bound to edit, approvers: the OIDC group "ops").
func TestMain(m *testing.M) {
	os.Exit(harness.MeshMain(m, harness.MeshOptions{
		Name:       "access",
		Users:      dexUsers,
		Admin:      admin,
		GroupRoles: map[string]string{"clustral:viewers": "view", "clustral:editors": "edit"},
		Roles: []proto.Role{
			{Name: "viewer", Groups: []string{"clustral:viewers"}},
			{Name: "editor", Groups: []string{"clustral:editors"}, ApproverGroups: []string{"ops"}},
		},
	}, func(s *harness.MeshSuite) { suite = s }))
}
