package mesh

import (
	"errors"
	"strings"
	"testing"

	"github.com/clustral/clustral/integration/harness"
)

// TestNoRole: a user with no role on the cluster still gets its context,
// and kubectl prints the plain-text 403 naming the cluster and the way
// forward.
func TestNoRole(t *testing.T) {
	suite.NewMeshWithAgent(t)
	c := suite.NewUser(t, carol)
	c.MustLogin()
	c.MustUp()
	for _, args := range [][]string{
		{"get", "pods"},
		{"get", "--raw", "/version"},
	} {
		res, err := c.RunKubectl(args...)
		var ke *harness.KubectlError
		if !errors.As(err, &ke) {
			t.Fatalf("kubectl %v: err = %v, want a harness.Refusal", args, err)
		}
		for _, want := range []string{"Forbidden", "carol@example.com has no role on cluster 'kind'", "clustral access request --cluster kind --role <role>"} {
			if !strings.Contains(res.Stderr, want) {
				t.Errorf("kubectl %v: stderr = %q, want %q", args, res.Stderr, want)
			}
		}
	}
}
