package mesh

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/integration/harness"
)

// TestTwoAgents: with two agents for one cluster, losing the one in use —
// stopped gracefully (it deregisters) or killed (the coordinator marks it
// offline when its map stream drops) — leaves kubectl working through the
// other.
func TestTwoAgents(t *testing.T) {
	m := suite.NewMesh(t)
	agents := []*harness.Agent{suite.StartAgent(t, m.JoinToken), suite.StartAgent(t, m.JoinToken)}
	b := suite.NewUser(t, bob)
	b.MustLogin()
	m.Assign(t, bob.Email, "editor")
	b.MustUp()

	n := 0
	// probe runs one kubectl listing configmaps in a namespace of its own
	// name, so the agent logs tell which agent served it.
	probe := func() (string, error) {
		n++
		ns := fmt.Sprintf("probe-%d", n)
		_, err := b.RunKubectl("get", "configmaps", "-n", ns)
		return ns, err
	}
	// servedBy returns the index of the agent that logged a request in ns.
	servedBy := func(t *testing.T, ns string) int {
		t.Helper()
		who := -1
		harness.MustEventually(t, 5*time.Second, func(context.Context) error {
			for i, a := range agents {
				log, err := os.ReadFile(a.Proc.LogPath())
				if err != nil {
					return err
				}
				if strings.Contains(string(log), "namespace="+ns+" ") || strings.Contains(string(log), "namespace="+ns+"\n") {
					who = i
					return nil
				}
			}
			return fmt.Errorf("no agent logged a request in namespace %s", ns)
		})
		return who
	}

	parent := t
	for _, tt := range []struct {
		name string
		stop func(*harness.Process)
	}{
		{"stop", (*harness.Process).Stop},
		{"kill", (*harness.Process).Kill},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ns, err := probe()
			if err != nil {
				t.Fatal(err)
			}
			used := servedBy(t, ns)

			start := time.Now()
			tt.stop(agents[used].Proc)
			attempts := 0
			harness.MustEventually(t, 15*time.Second, func(context.Context) error {
				attempts++
				ns, err = probe()
				return err
			})
			t.Logf("after %s of the agent in use, kubectl worked %v later, on attempt %d", tt.name, time.Since(start), attempts)
			if other := servedBy(t, ns); other == used {
				t.Fatalf("agent %d served a request after it was stopped", used)
			}
			// Two agents again for what follows, for the whole test.
			agents[used] = suite.StartAgent(parent, m.JoinToken)
		})
	}
}
