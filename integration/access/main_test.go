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
	alice, bob, carol, dave = harness.Alice, harness.Bob, harness.Carol, harness.Dave
	dexUsers                = []harness.DexUser{harness.Admin, alice, bob, carol, dave}
)

var suite *harness.MeshSuite

// TestMain runs the tests against one apiserver and Dex. Every mesh has
// the roles viewer and editor (see harness.ViewerRole), editor approved
// by the OIDC group "ops".
func TestMain(m *testing.M) {
	editor := harness.EditorRole
	editor.ApproverGroups = []string{"ops"}
	roles := []proto.Role{harness.ViewerRole, editor}
	os.Exit(harness.MeshMain(m, harness.MeshOptions{Name: "access", Users: dexUsers, Roles: roles}, func(s *harness.MeshSuite) { suite = s }))
}
