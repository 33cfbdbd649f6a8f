// Package trace tests W3C trace context end to end: a request sent
// through the mesh with a traceparent reaches a real kube-apiserver with
// tracing enabled, which exports its spans under that trace id to a
// receiver in the test, and the agent's log line and audit event carry
// the same trace id.
package trace

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

// TestMain runs the tests against one apiserver, tracing into
// suite.Traces, with the agent's identity in system:monitoring, and Dex. Every mesh has the role viewer (group
// clustral:viewers, bound to view).
func TestMain(m *testing.M) {
	os.Exit(harness.MeshMain(m, harness.MeshOptions{
		Name:       "trace",
		Users:      []harness.DexUser{admin, alice},
		Admin:      admin,
		GroupRoles: map[string]string{"clustral:viewers": "view"},
		Roles:      []proto.Role{{Name: "viewer", Groups: []string{"clustral:viewers"}}},
		Tracing:    true,
		// The apiserver follows a caller's traceparent only if the caller
		// is in system:masters or system:monitoring; otherwise it starts
		// a trace of its own and links the caller's.
		AgentGroups: []string{"system:monitoring"},
	}, func(s *harness.MeshSuite) { suite = s }))
}
