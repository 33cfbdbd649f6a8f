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

// The people in Dex: an administrator, and alice, who has no role until
// she asks for one.
var admin, alice = harness.Admin,
	harness.DexUser{Email: "alice@example.com", Password: "alice-console-pw", Groups: []string{"developers"}}

var suite *harness.MeshSuite

// TestMain runs the tests against one apiserver and Dex. Every mesh has
// the role admin (the group clustral:admins, bound to cluster-admin),
// which anyone may request; its description is hostile markup, which
// the console must show as text.
func TestMain(m *testing.M) {
	os.Exit(harness.MeshMain(m, harness.MeshOptions{
		Name: "console", Users: []harness.DexUser{alice},
		GroupRoles: map[string]string{"clustral:admins": "cluster-admin"},
		Roles: []proto.Role{
			{Name: "admin", Description: `cluster admin <script>alert(1)</script> "><img src=x onerror=alert(2)>`, Groups: []string{"clustral:admins"}},
		},
	}, func(s *harness.MeshSuite) { suite = s }))
}
