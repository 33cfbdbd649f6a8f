// Package audit tests the audit trail end to end: request events from a
// real agent in front of a real kube-apiserver, delivered exactly once and
// in order through a coordinator outage and an agent crash, and tampering
// with the coordinator's store caught by clustral audit verify, a cut
// below an exported checkpoint included, and a request's trace id shared
// by the apiserver's spans, the agent's log and the audit event.
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
// the role viewer (see harness.ViewerRole). The apiserver exports its
// spans to suite.Traces, and follows the agent's trace context: the
// agent's identity is in system:monitoring.
func TestMain(m *testing.M) {
	os.Exit(harness.MeshMain(m, harness.MeshOptions{
		Name:    "audit",
		Users:   []harness.DexUser{alice},
		Roles:   []proto.Role{harness.ViewerRole},
		Tracing: true,
		// The apiserver follows a caller's traceparent only if the caller
		// is in system:masters or system:monitoring; otherwise it starts
		// a trace of its own and links the caller's.
		AgentGroups: []string{"system:monitoring"},
	}, func(s *harness.MeshSuite) { suite = s }))
}
