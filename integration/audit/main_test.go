// Package audit tests the audit trail end to end: request events from a
// real agent in front of a real kube-apiserver, delivered exactly once and
// in order through a coordinator outage and an agent crash, and tampering
// with the coordinator's store caught by clustral audit verify, a cut
// below an exported checkpoint included.
package audit

import (
	"os"
	"testing"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

var (
	admin = harness.DexUser{Email: "admin@example.com", Password: "admin-pw", Groups: []string{"platform"}}
	alice = harness.DexUser{Email: "alice@example.com", Password: "alice-pw", Groups: []string{"dev"}}
)

var suite *harness.MeshSuite

// TestMain runs the tests against one apiserver and Dex. Every mesh has
// the role viewer (group clustral:viewers, bound to view).
func TestMain(m *testing.M) {
	os.Exit(harness.MeshMain(m, harness.MeshOptions{
		Name:       "audit",
		Users:      []harness.DexUser{admin, alice},
		Admin:      admin,
		GroupRoles: map[string]string{"clustral:viewers": "view"},
		Roles:      []proto.Role{{Name: "viewer", Groups: []string{"clustral:viewers"}}},
	}, func(s *harness.MeshSuite) { suite = s }))
}
