package coordinator

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// TestAuditCheckpointsInServer: the coordinator keeps its checkpoint key
// in a file of its own, signs at start and at close, exports a
// checkpoint to an administrator, verifies against it online, and a store
// cut back below it fails offline.
func TestAuditCheckpointsInServer(t *testing.T) {
	e := newAccessEnv(t)
	keyPath := filepath.Join(e.dir, AuditKeyFile)
	testkit.CheckPerm(t, "checkpoint key file", keyPath, 0o600)
	var ck proto.AuditCheckpoint
	e.must("POST", "/api/v1/audit/checkpoints", e.admin.Token, nil, &ck)
	if err := ck.Verify(); err != nil {
		t.Fatalf("exported checkpoint: %v", err)
	}
	if ck.KeyID() != proto.AuditKeyID(e.srv.auditKey.Public().(ed25519.PublicKey)) {
		t.Fatalf("checkpoint key %s is not the coordinator's", ck.KeyID())
	}
	var page proto.AuditPage
	e.must("GET", "/api/v1/audit/events?code=AL001I", e.admin.Token, nil, &page)
	if len(page.Events) != 1 || page.Events[0].Seq != ck.Seq || page.Events[0].Actor != "admin@example.com" {
		t.Fatalf("export events = %+v, want one AL001I by the admin at record %d", page.Events, ck.Seq)
	}
	if status, _ := e.call("POST", "/api/v1/audit/checkpoints", e.alice.Token, nil, nil); status != 403 {
		t.Fatalf("checkpoint by a non-admin = %d, want 403", status)
	}
	// The latest checkpoint is readable without signing another.
	var latest proto.AuditCheckpoint
	e.must("GET", "/api/v1/audit/checkpoints/latest", e.admin.Token, nil, &latest)
	if latest != ck {
		t.Fatalf("latest checkpoint = %+v, want the export %+v", latest, ck)
	}
	if status, _ := e.call("GET", "/api/v1/audit/checkpoints/latest", e.alice.Token, nil, nil); status != 403 {
		t.Fatalf("latest checkpoint for a non-admin = %d, want 403", status)
	}
	var v proto.AuditVerification
	e.must("POST", "/api/v1/audit/verify", e.admin.Token, proto.AuditVerifyRequest{Checkpoint: &ck}, &v)
	if !v.OK || v.Against == nil || v.Checkpoints == 0 || v.SignedSeq != ck.Seq {
		t.Fatalf("online verify against the export = %+v", v)
	}
	forged := ck
	forged.Seq++
	e.must("POST", "/api/v1/audit/verify", e.admin.Token, proto.AuditVerifyRequest{Checkpoint: &forged}, &v)
	if v.OK || !strings.Contains(v.Problem, "signature") {
		t.Fatalf("online verify against an edited checkpoint = %+v", v)
	}
	if status, p := e.call("POST", "/api/v1/audit/verify", e.admin.Token, map[string]any{}, nil); status != 400 || !strings.Contains(p.Title, "checkpoint") {
		t.Fatalf("verify with an empty body = %d %+v", status, p)
	}

	e.admin = e.login("admin@example.com") // records after the export
	e.stop()
	// Close signed the log as it was left.
	v, err := auditlog.VerifyDir(e.dir, &ck)
	if err != nil || !v.OK || v.SignedSeq != v.Last || v.Last <= ck.Seq {
		t.Fatalf("offline verify after close = %+v, %v; want the last record signed", v, err)
	}
	// Cut the log back below the export and remove every trace of it.
	st, err := store.OpenBolt(filepath.Join(e.dir, "coordinator.db"))
	if err != nil {
		t.Fatal(err)
	}
	cutAudit(t, st, ck.Seq-1)
	st.Close()
	if v, err := auditlog.VerifyDir(e.dir, nil); err != nil || !v.OK {
		t.Fatalf("offline verify without the export = %+v, %v (nothing in the store is left to catch it)", v, err)
	}
	v, err = auditlog.VerifyDir(e.dir, &ck)
	if err != nil || v.OK || v.BadSeq != ck.Seq || !strings.Contains(v.Problem, "cut off") {
		t.Fatalf("offline verify against the export = %+v, %v", v, err)
	}
	// Without the key file a copy of the store is checked with the key of
	// the export; without either, the error says what to give.
	os.Remove(keyPath)
	if v, err := auditlog.VerifyDir(e.dir, &ck); err != nil || v.OK || v.Key != ck.KeyID() {
		t.Fatalf("offline verify of a copy = %+v, %v", v, err)
	}
	if _, err := auditlog.VerifyDir(e.dir, nil); err == nil || !strings.Contains(err.Error(), "--checkpoint") {
		t.Fatalf("offline verify without key or export: %v", err)
	}
}

// TestAuditIngestStampsAgent: what an agent sends is stored with the
// agent's identity, not the one the event claims, and with a time no
// later than 5 minutes after the coordinator's clock.
func TestAuditIngestStampsAgent(t *testing.T) {
	e := newAccessEnv(t)
	agent := e.registerAgent(e.joinToken, "")
	now := time.Now().UTC()
	ev := func(seq uint64, actor string, at time.Time) proto.AuditEvent {
		return proto.AuditEvent{Code: proto.AuditRequest, Time: at, Actor: actor, SourceSeq: seq, Cluster: "staging",
			Category: proto.CategoryAuth, Seq: 99, Hash: "forged",
			Metadata: map[string]string{"agent": "agt_someone_else", "agent_time": "2020-01-01T00:00:00Z", "kube_user": "alice@example.com"}}
	}
	tests := []struct {
		name      string
		ev        proto.AuditEvent
		actor     string
		claimed   string
		clamped   bool
		agentTime string
	}{
		{"a user's request", ev(1, "alice@example.com", now), "alice@example.com", "", false, ""},
		{"claims to be the coordinator", ev(2, "system", now), "agent:prod", "system", false, ""},
		{"claims another cluster's agent", ev(3, "agent:staging", now), "agent:prod", "agent:staging", false, ""},
		{"no actor", ev(4, "", now), "agent:prod", "", false, ""},
		{"a clock a minute ahead", ev(5, "alice@example.com", now.Add(time.Minute)), "alice@example.com", "", false, ""},
		{"dated years ahead", ev(6, "alice@example.com", now.AddDate(3, 0, 0)), "alice@example.com", "", true, now.AddDate(3, 0, 0).Format(time.RFC3339Nano)},
		{"dated before 2000", ev(7, "alice@example.com", time.Date(1970, 1, 1, 0, 0, 1, 0, time.UTC)), "alice@example.com", "", true, "1970-01-01T00:00:01Z"},
		{"spooled an hour ago", ev(8, "alice@example.com", now.Add(-time.Hour)), "alice@example.com", "", false, ""},
		{"claims a device", ev(9, "device:dev_0123", now), "agent:prod", "device:dev_0123", false, ""},
		{"claims to be anonymous", ev(10, "anonymous", now), "agent:prod", "anonymous", false, ""},
		{"a peer without a user", ev(11, "peer:abc=", now), "peer:abc=", "", false, ""},
	}
	var batch proto.AuditBatch
	batch.Source = "spool1"
	for _, tt := range tests {
		batch.Events = append(batch.Events, tt.ev)
	}
	var ack proto.AuditAck
	e.must("POST", "/api/v1/audit/events", agent.NodeToken, batch, &ack)
	after := time.Now().UTC()
	if ack.Stored != len(tests) {
		t.Fatalf("ack = %+v", ack)
	}
	var page proto.AuditPage
	e.must("GET", "/api/v1/audit/events?order=asc&category=request", e.admin.Token, nil, &page)
	if len(page.Events) != len(tests) {
		t.Fatalf("stored %d request events, want %d", len(page.Events), len(tests))
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := page.Events[i]
			if got.Cluster != "prod" || got.Metadata["agent"] != agent.NodeID || got.Source != "spool1" || got.Category != proto.CategoryRequest {
				t.Errorf("stored as cluster %q agent %q source %q category %q; want the sending agent's", got.Cluster, got.Metadata["agent"], got.Source, got.Category)
			}
			if got.Actor != tt.actor || got.Metadata["claimed_actor"] != tt.claimed {
				t.Errorf("actor %q (claimed %q), want %q (claimed %q)", got.Actor, got.Metadata["claimed_actor"], tt.actor, tt.claimed)
			}
			if got.Metadata["agent_time"] != tt.agentTime {
				t.Errorf("agent_time %q, want %q", got.Metadata["agent_time"], tt.agentTime)
			}
			if got.Metadata["kube_user"] != "alice@example.com" {
				t.Errorf("the agent's own metadata was lost: %v", got.Metadata)
			}
			if got.Time.After(after.Add(auditlog.MaxSkew)) {
				t.Errorf("stored time %s is beyond the coordinator's clock (%s) plus the skew", got.Time, after)
			}
			if tt.clamped && (got.Time.Before(now) || got.Time.After(after)) {
				t.Errorf("clamped time %s is not when the batch arrived (%s to %s)", got.Time, now, after)
			}
			if !tt.clamped && !got.Time.Equal(tt.ev.Time) {
				t.Errorf("time %s changed, want %s", got.Time, tt.ev.Time)
			}
		})
	}
	e.must("GET", "/api/v1/audit/events?code=AG007W", e.admin.Token, nil, &page)
	if len(page.Events) != 1 || page.Events[0].Metadata["events"] != "2" || page.Events[0].Cluster != "prod" {
		t.Fatalf("clock skew events = %+v, want one for the 2 misdated events", page.Events)
	}
}

// TestAuditSignerSignsPeriodically: while the log grows, the coordinator
// signs a checkpoint of its head every AuditCheckpointInterval, without
// anyone asking. It runs in a synctest bubble: the signer's ticker runs on
// the bubble's clock, so the rounds take no real time.
func TestAuditSignerSignsPeriodically(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, err := New(context.Background(), Config{DataDir: t.TempDir(), AuditCheckpointInterval: time.Second, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		pub := srv.auditKey.Public().(ed25519.PublicKey)
		for round := range 2 {
			srv.audit(proto.AuditEvent{Code: proto.AuditAgentRefused, Actor: fmt.Sprint("round", round), Outcome: proto.OutcomeFailure})
			testkit.WaitFor(t, fmt.Sprintf("round %d: a checkpoint of the head", round), func() bool {
				v, err := auditlog.Verify(srv.store, auditlog.VerifyOptions{Key: pub})
				if err != nil || !v.OK {
					t.Fatalf("verify = %+v, %v", v, err)
				}
				return v.Last == uint64(round+1) && v.SignedSeq == v.Last && v.Checkpoints == round+1
			})
		}
	})
}
