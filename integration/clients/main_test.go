// Package clients runs the Kubernetes clients platform teams use, helm and
// k9s, as users run them: against the kubeconfig context `clustral up`
// writes, through the mesh, against a real kube-apiserver (with KWOK's
// fake node serving pod logs).
package clients

import (
	"os"
	"testing"

	"github.com/clustral/clustral/integration/harness"
)

// The static users in Dex.
var alice, bob = harness.Alice, harness.Bob

var suite *harness.MeshSuite

// TestMain runs the tests against one apiserver and Dex. Every mesh has
// the roles viewer and editor (see harness.ViewerRole).
func TestMain(m *testing.M) {
	os.Exit(harness.MeshMain(m, harness.MeshOptions{Name: "clients", Users: []harness.DexUser{alice, bob}}, func(s *harness.MeshSuite) { suite = s }))
}
