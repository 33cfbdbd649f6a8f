// Package console tests the coordinator's web console in a real browser:
// Debian's Chromium, headless, driven with chromedp against a real
// coordinator signing people in through Dex's HTML login form, a real
// kube-apiserver and agent, and kubectl through the mesh.
package console

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
)

var suite *harness.MeshSuite

// TestMain runs the tests against one apiserver and Dex. Every mesh has
// the role admin (the group clustral:admins, bound to cluster-admin),
// which anyone may request.
func TestMain(m *testing.M) {
	os.Exit(harness.MeshMain(m, harness.MeshOptions{
		Name:       "console",
		Users:      []harness.DexUser{admin, alice},
		Admin:      admin,
		GroupRoles: map[string]string{"clustral:admins": "cluster-admin"},
		Roles: []proto.Role{
			{Name: "admin", Description: `cluster admin <script>alert(1)</script> "><img src=x onerror=alert(2)>`, Groups: []string{"clustral:admins"}},
		},
	}, func(s *harness.MeshSuite) { suite = s }))
}
