package coordinatortest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

// Recording is a session recording for ShipRecording to ship.
type Recording struct {
	// Session is its header's session; its ID and Cluster must be the
	// shipping agent's session and cluster.
	Session proto.RecordingSession
	// Output is its output events ("o"), in order.
	Output []CastOutput
	// Digest is the SHA-256 its end event (RQ004I) carries: empty for the
	// recording's own, NoEndEvent to ship no end event.
	Digest string
	// Seq is the end event's sequence number in the agent's spool.
	Seq uint64
}

// CastOutput is one output event of a recording: T seconds into it.
type CastOutput struct {
	T    float64
	Data string
}

// Cast returns the recording's bytes: its asciicast header line and
// output events.
func (rec Recording) Cast(tb testing.TB) []byte {
	tb.Helper()
	s := rec.Session
	h, err := json.Marshal(proto.RecordingHeader{Version: 2, Width: 80, Height: 24, Timestamp: s.Start.Unix(), Session: s})
	if err != nil {
		tb.Fatal(err)
	}
	cast := bytes.NewBuffer(append(h, '\n'))
	for _, o := range rec.Output {
		b, err := json.Marshal([]any{o.T, "o", o.Data})
		if err != nil {
			tb.Fatal(err)
		}
		cast.Write(append(b, '\n'))
	}
	return cast.Bytes()
}

// NoEndEvent as Recording.Digest ships a recording without its end event.
const NoEndEvent = "none"

// ShipRecording ships rec to the coordinator at coordURL as the agent
// holding nodeToken does (PUT /api/v1/recordings/{id}, then the end event
// with the recording's digest), through hc, and returns the recording's
// bytes. A refusal fails tb.
func ShipRecording(tb testing.TB, coordURL string, hc *http.Client, nodeToken string, rec Recording) []byte {
	tb.Helper()
	s := rec.Session
	body := rec.Cast(tb)
	ctx := context.Background()
	api := coordclient.New(coordURL, nodeToken, hc)
	if _, err := api.PutRecording(ctx, s.ID, bytes.NewReader(body)); err != nil {
		tb.Fatalf("ship recording %s: %v", s.ID, err)
	}
	digest := rec.Digest
	switch digest {
	case NoEndEvent:
		return body
	case "":
		sum := sha256.Sum256(body)
		digest = hex.EncodeToString(sum[:])
	}
	_, err := api.ShipAudit(ctx, proto.AuditBatch{Source: "spool", Events: []proto.AuditEvent{{
		Code: proto.AuditStreamEnded, Time: time.Now(), Actor: s.User, SourceSeq: rec.Seq, Correlation: s.ID, Status: http.StatusSwitchingProtocols,
		Resource: &proto.AuditResource{Verb: "create", Resource: "pods", Subresource: s.Subresource, Namespace: s.Namespace, Name: s.Pod},
		Metadata: map[string]string{proto.MetaRecording: s.ID, proto.MetaRecordingSHA256: digest, proto.MetaRecordingStatus: proto.RecordingComplete},
	}}})
	if err != nil {
		tb.Fatalf("ship the end event of recording %s: %v", s.ID, err)
	}
	return body
}
