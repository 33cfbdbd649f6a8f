// Package live tests the agent's live cluster view end to end: a real
// kube-apiserver with KWOK, a coordinator, an agent run with --live and
// the RBAC of deploy/agent/components/live-view, and viewers reaching the
// agent over the mesh through `clustral up`, as `clustral ui` does.
package live

import (
	"os"
	"testing"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// The three users: alice reads the whole cluster (viewer), bob reads one
// namespace (RBAC: a RoleBinding of his group there), dave reads the same
// namespace minus events (the same RBAC, and clustral restrictions that
// leave events out).
var (
	alice, bob, dave = harness.Alice, harness.Bob, harness.Dave

	nsReader = proto.Role{Name: "ns-reader", Groups: []string{nsReaders}}
	noEvents = proto.Role{Name: "ns-reader-no-events", Groups: []string{nsReaders}, Restrictions: &proto.Restrictions{
		Resources: []string{"namespaces", "nodes", "pods", "deployments", "replicasets", "statefulsets", "daemonsets",
			"jobs", "cronjobs", "services", "ingresses"},
	}}
)

const nsReaders = "clustral:ns-readers"

var suite *harness.MeshSuite

func TestMain(m *testing.M) {
	roles := []proto.Role{harness.ViewerRole, nsReader, noEvents}
	os.Exit(harness.MeshMain(m, harness.MeshOptions{Name: "live", Users: []harness.DexUser{alice, bob, dave}, Roles: roles},
		func(s *harness.MeshSuite) { suite = s }))
}
