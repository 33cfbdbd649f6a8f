// Package mesh tests clustral end to end: a real coordinator, agents and
// `clustral up` processes talking WireGuard over loopback UDP, Dex as the
// OIDC provider, a real kube-apiserver judging the impersonated identities,
// and the installed kubectl.
package mesh

import (
	"os"
	"testing"

	"github.com/clustral/clustral/integration/harness"
)

// The static users in Dex.
var admin, alice, bob, carol = harness.Admin, harness.Alice, harness.Bob, harness.Carol

var suite *harness.MeshSuite

// TestMain runs the tests against one apiserver and Dex. Every mesh has
// the roles viewer and editor (see harness.ViewerRole).
func TestMain(m *testing.M) {
	users := []harness.DexUser{alice, bob, carol}
	os.Exit(harness.MeshMain(m, harness.MeshOptions{Name: "mesh", Users: users}, func(s *harness.MeshSuite) { suite = s }))
}
