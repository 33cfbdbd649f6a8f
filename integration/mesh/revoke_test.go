package mesh

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/integration/harness"
)

// TestRoleRemovedWhileUp: a user whose only assignment is deleted while
// she is up loses the cluster at once: her open watch is closed, and a new
// kubectl fails with a message that says why and what to do.
//
// The agent's own NO_ROLE_ASSIGNMENT answer cannot be reached end to end:
// the coordinator shows an agent only the devices of users with a role on
// its cluster, so a device without one is never its peer (the agent's
// tests cover that answer). What a user sees instead is this.
func TestRoleRemovedWhileUp(t *testing.T) {
	m, c, asg := newUpUser(t, carol, "viewer")
	ns := suite.NewNamespace(t)
	if _, err := c.RunKubectl("get", "configmaps", "-n", ns); err != nil {
		t.Fatalf("before removal: %v", err)
	}
	w := c.StartKubectl(t, nil, nil, "get", "configmaps", "-n", ns, "-w", "--output-watch-events")
	// Once an event arrives through it, the watch is open end to end.
	suite.CreateConfigMap(t, ns, "before-removal")
	w.WaitContains(10*time.Second, "before-removal")

	start := time.Now()
	m.Admin.MustAPI("DELETE", "/api/v1/assignments/"+asg.ID, nil, nil)
	err := w.WaitExit(10 * time.Second)
	took := time.Since(start)
	_, stderr := w.Output()
	// kubectl ends a watch the server closed without an error.
	t.Logf("watch ended %v after the assignment was deleted: %v %s", took, err, strings.TrimSpace(stderr))
	if took > 3*time.Second {
		t.Errorf("watch ended %v after the role was removed, want within 1s (and one retry by kubectl)", took)
	}

	// The context stays, and kubectl prints the plain-text 403 that says
	// why and what to do.
	res, err := c.RunKubectl("get", "configmaps", "-n", ns)
	var ke *harness.KubectlError
	if !errors.As(err, &ke) {
		t.Fatalf("kubectl after removal: err = %v, want a kubectl failure", err)
	}
	for _, want := range []string{"carol@example.com has no role on cluster 'kind'", "clustral access request --cluster kind"} {
		if !strings.Contains(res.Stderr, want) {
			t.Errorf("kubectl after removal: stderr = %q, want %q", res.Stderr, want)
		}
	}

	// A new assignment brings the cluster back to the running tunnel.
	m.Assign(t, carol.Email, "viewer")
	harness.MustEventually(t, 10*time.Second, func(ctx context.Context) error {
		_, err := c.RunKubectl("get", "configmaps", "-n", ns)
		return err
	})
}
