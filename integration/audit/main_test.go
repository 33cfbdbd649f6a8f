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

var alice = harness.Alice

var suite *harness.MeshSuite

// TestMain runs the tests against one apiserver and Dex. Every mesh has
// the role viewer (see harness.ViewerRole).
func TestMain(m *testing.M) {
	opts := harness.MeshOptions{Name: "audit", Users: []harness.DexUser{alice}, Roles: []proto.Role{harness.ViewerRole}}
	os.Exit(harness.MeshMain(m, opts, func(s *harness.MeshSuite) { suite = s }))
}
