package mesh

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// restartOutage is how long TestRevocationAfterCoordinatorRestart keeps
// the coordinator down: CLUSTRAL_TEST_OUTAGE (a Go duration, e.g. 60s),
// else 5s. The nodes' reconnect backoff reaches its cap (800ms) after
// four failed attempts, about 1.5s into an outage, and stays there: an
// outage of 5s leaves the agent and the device retrying exactly as one of
// 60s does, in a twelfth of the time.
func restartOutage(t *testing.T) time.Duration {
	t.Helper()
	v := os.Getenv("CLUSTRAL_TEST_OUTAGE")
	if v == "" {
		return 5 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("CLUSTRAL_TEST_OUTAGE=%q is not a positive duration (e.g. 60s)", v)
	}
	return d
}

// TestRevocationAfterCoordinatorRestart: the coordinator is killed
// (SIGKILL) while a user watches through the mesh, stays down, and is
// started again. The watch lives on through the outage (the coordinator is
// not on the data path). An assignment deleted as soon as the restarted
// coordinator answers /readyz reaches the agent, and ends the watch,
// within a second: the agent's map stream, however long it failed,
// retries at least every 800ms.
func TestRevocationAfterCoordinatorRestart(t *testing.T) {
	outage := restartOutage(t)
	m, c, asg := newUpUser(t, carol, "viewer")
	ns := suite.NewNamespace(t)
	w := c.StartKubectl(t, nil, nil, "get", "configmaps", "-n", ns, "-w", "--output-watch-events")
	suite.CreateConfigMap(t, ns, "before-outage")
	w.WaitContains(10*time.Second, "before-outage")

	m.Coord.Proc.Kill()
	// The outage itself: nothing to wait for but time.
	time.Sleep(outage)
	suite.CreateConfigMap(t, ns, "during-outage")
	w.WaitContains(10*time.Second, "during-outage")

	// Start returns as soon as /readyz answers (it polls every 50ms).
	if err := m.Coord.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	m.Admin.MustAPI("DELETE", "/api/v1/assignments/"+asg.ID, nil, nil)
	err := w.WaitExit(15 * time.Second)
	took := time.Since(start)
	_, stderr := w.Output()
	t.Logf("after a %v outage, the watch ended %v after the revocation: %v %s", outage, took, err, strings.TrimSpace(stderr))
	// Within 1s the agent has the revocation and resets the watch's
	// connection; kubectl then takes a moment to notice and exit (see
	// TestRoleRemovedWhileUp, without a restart). Before the backoff was
	// capped this took 10s and more.
	if took > 2*time.Second {
		t.Errorf("watch ended %v after the revocation that followed the restart, want within 1s (plus kubectl's exit)", took)
	}
}
