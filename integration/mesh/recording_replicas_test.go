package mesh

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/coordinatortest"
	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

// newRecorderOnReplicaB starts two replicas and returns the
// administrator (whose CLI talks to replica A), replica B's URL, and the
// node token of an agent registered there.
func newRecorderOnReplicaB(t *testing.T) (*harness.TestUser, string, string) {
	t.Helper()
	r, adm, cl := newReplicaMesh(t)
	urls := r.URLs()
	var k proto.Key
	rand.Read(k[:])
	reg, err := harness.RegisterAgent(t.Context(), http.DefaultClient, urls[1], cl.JoinToken, k, "recorder")
	if err != nil {
		t.Fatal(err)
	}
	return adm, urls[1], reg.NodeToken
}

// TestRecordingAcrossReplicas: an agent ships a recording, and its end
// event, to replica B; the administrator, whose CLI talks to replica A,
// lists it, exports it byte for byte, and audit verify checks it there.
func TestRecordingAcrossReplicas(t *testing.T) {
	const id = "replicated-1"
	adm, urlB, nodeToken := newRecorderOnReplicaB(t)
	rec := coordinatortest.ShipRecording(t, urlB, http.DefaultClient, nodeToken, coordinatortest.Recording{
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

// TestRecordingWatchedLiveAcrossReplicas: an agent appends a running
// session's live part to replica B; the administrator, whose CLI talks to
// replica A, follows it there (clustral sessions play --follow) and sees
// each part as it comes, and the follow ends when B stores the whole
// recording. B tells the agent someone watches, though the watcher reads
// on A.
func TestRecordingWatchedLiveAcrossReplicas(t *testing.T) {
	const id = "replicated-live-1"
	adm, urlB, nodeToken := newRecorderOnReplicaB(t)
	rec := coordinatortest.Recording{
		Session: proto.RecordingSession{ID: id, User: bob.Email, Cluster: harness.MeshCluster, Namespace: "default", Pod: "web-0",
			Subresource: "exec", Command: []string{"sh"}, Protocol: "v5.channel.k8s.io", Start: time.Now(), Correlation: id},
		Output: []coordinatortest.CastOutput{{T: 0.1, Data: "$ echo first\r\nfirst-part\r\n"}},
		Seq:    1,
	}
	agent := coordclient.New(urlB, nodeToken, http.DefaultClient)
	first := rec.Cast(t)
	if _, err := agent.AppendRecording(t.Context(), id, 0, bytes.NewReader(first)); err != nil {
		t.Fatal(err)
	}
	watch := harness.StartPane(t, harness.PaneOptions{Name: "watch", Program: adm.Bin,
		Args: []string{"sessions", "play", "--follow", id}, Env: adm.Environ(), Width: 120, Height: 40})
	watch.WaitContains(20*time.Second, "first-part")
	harness.MustEventually(t, 10*time.Second, func(ctx context.Context) error {
		ap, err := agent.AppendRecording(ctx, id, int64(len(first)), bytes.NewReader(nil))
		if err != nil || !ap.Watched {
			return fmt.Errorf("append on replica B = %+v, %v; want watched", ap, err)
		}
		return nil
	})
	rec.Output = append(rec.Output, coordinatortest.CastOutput{T: 0.5, Data: "$ echo second\r\nsecond-part\r\n"})
	whole := rec.Cast(t)
	if _, err := agent.AppendRecording(t.Context(), id, int64(len(first)), bytes.NewReader(whole[len(first):])); err != nil {
		t.Fatal(err)
	}
	watch.WaitContains(20*time.Second, "second-part")
	if exited, _ := watch.Exited(); exited {
		t.Fatalf("the follow ended while the session runs:\n%s", watch.Screen())
	}
	coordinatortest.ShipRecording(t, urlB, http.DefaultClient, nodeToken, rec)
	watch.WaitExited(30 * time.Second)
}
