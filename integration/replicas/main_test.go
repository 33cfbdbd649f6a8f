// Package replicas tests several coordinator replicas serving one mesh
// from one etcd: real coordinator processes on a three-member etcd
// cluster, agents and `clustral up` attached to different replicas, Dex
// and a real kube-apiserver.
package replicas

import (
	"os"
	"testing"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// The static users in Dex.
var (
	admin = harness.DexUser{Email: "admin@example.com", Password: "admin-pw", Groups: []string{"platform"}}
	carol = harness.DexUser{Email: "carol@example.com", Password: "carol-pw"}
)

var suite *harness.MeshSuite

// TestMain runs the tests against one apiserver and Dex; each test starts
// its own etcd and replicas. The role viewer is bound to view.
func TestMain(m *testing.M) {
	os.Exit(harness.MeshMain(m, harness.MeshOptions{
		Name:       "replicas",
		Users:      []harness.DexUser{admin, carol},
		Admin:      admin,
		GroupRoles: map[string]string{"clustral:viewers": "view"},
		Roles:      []proto.Role{{Name: "viewer", Groups: []string{"clustral:viewers"}}},
	}, func(s *harness.MeshSuite) { suite = s }))
}
