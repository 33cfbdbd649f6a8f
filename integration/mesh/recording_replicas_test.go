package mesh

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/coordinatortest"
	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// TestRecordingAcrossReplicas: an agent ships a recording, and its end
// event, to replica B; the administrator, whose CLI talks to replica A,
// lists it, exports it byte for byte, and audit verify checks it there.
func TestRecordingAcrossReplicas(t *testing.T) {
	const id = "replicated-1"
	r, adm, cl := newReplicaMesh(t)
	urls := r.URLs()
	var k proto.Key
	rand.Read(k[:])
	reg, err := harness.RegisterAgent(t.Context(), http.DefaultClient, urls[1], cl.JoinToken, k, "recorder")
	if err != nil {
		t.Fatal(err)
	}
	rec := coordinatortest.ShipRecording(t, urls[1], http.DefaultClient, reg.NodeToken, coordinatortest.Recording{
		Session: proto.RecordingSession{ID: id, User: bob.Email, Cluster: harness.MeshCluster, Namespace: "default", Pod: "web-0",
			Subresource: "exec", Command: []string{"sh"}, Protocol: "v5.channel.k8s.io", Start: time.Now(), Correlation: id},
		Output: []coordinatortest.CastOutput{{T: 0.1, Data: "$ echo across\r\nacross\r\n"}},
		Seq:    1,
	})
	if out := adm.MustRun("sessions", "ls", "-o", "json"); !strings.Contains(out, id) {
		t.Fatalf("sessions ls on replica A does not list %s:\n%s", id, out)
	}
	if out := adm.MustRun("sessions", "export", id); out != string(rec) {
		t.Errorf("export on replica A = %q, want %q", out, rec)
	}
	harness.MustEventually(t, 20*time.Second, func(ctx context.Context) error {
		if out := adm.MustRun("audit", "verify"); !strings.Contains(out, "Session recordings intact: 1 checked") {
			return fmt.Errorf("audit verify on replica A:\n%s", out)
		}
		return nil
	})
}
