package coordinator

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

func newAuditKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// mustSign signs a checkpoint of the head of st's log at now.
func mustSign(t *testing.T, st store.Store, key ed25519.PrivateKey, now time.Time) proto.AuditCheckpoint {
	t.Helper()
	var c proto.AuditCheckpoint
	err := st.Update(func(tx store.Tx) error {
		var err error
		c, err = signCheckpoint(tx, key, now)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// truncateAudit removes the records after seq and moves the head back to
// seq, as someone who can write the store would to hide the tail.
func truncateAudit(t *testing.T, st store.Store, seq uint64) {
	t.Helper()
	err := st.Update(func(tx store.Tx) error {
		head, err := getMark(tx, metaAuditHead)
		if err != nil {
			return err
		}
		for s := seq + 1; s <= head.Seq; s++ {
			if err := tx.Delete(store.Audit, auditKey(s)); err != nil {
				return err
			}
		}
		var e proto.AuditEvent
		if err := store.Get(tx, store.Audit, auditKey(seq), &e); err != nil {
			return err
		}
		return store.Put(tx, store.Meta, metaAuditHead, auditMark{Seq: seq, Hash: e.Hash})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// rewriteAudit changes the actor of record seq and rehashes it and every
// record after it, and the head: a chain that verifies on its own.
func rewriteAudit(t *testing.T, st store.Store, seq uint64) {
	t.Helper()
	err := st.Update(func(tx store.Tx) error {
		head, err := getMark(tx, metaAuditHead)
		if err != nil {
			return err
		}
		prev := ""
		if seq > 1 {
			var e proto.AuditEvent
			if err := store.Get(tx, store.Audit, auditKey(seq-1), &e); err != nil {
				return err
			}
			prev = e.Hash
		}
		for s := seq; s <= head.Seq; s++ {
			var e proto.AuditEvent
			if err := store.Get(tx, store.Audit, auditKey(s), &e); err != nil {
				return err
			}
			if s == seq {
				e.Actor = "someone-else@example.com"
			}
			e.PrevHash = prev
			e.Hash = proto.AuditHash(e)
			prev = e.Hash
			if err := store.Put(tx, store.Audit, auditKey(s), e); err != nil {
				return err
			}
		}
		return store.Put(tx, store.Meta, metaAuditHead, auditMark{Seq: head.Seq, Hash: prev})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// dropCheckpoints deletes the stored checkpoints of records from seq on.
func dropCheckpoints(t *testing.T, st store.Store, from uint64) {
	t.Helper()
	err := st.Update(func(tx store.Tx) error {
		var keys []string
		tx.ForEach(store.AuditCheckpoints, func(k string, _ []byte) error {
			if k >= auditKey(from) {
				keys = append(keys, k)
			}
			return nil
		})
		for _, k := range keys {
			if err := tx.Delete(store.AuditCheckpoints, k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// resign replaces every stored checkpoint with one of the record as it
// is now, signed with key.
func resign(t *testing.T, st store.Store, key ed25519.PrivateKey) {
	t.Helper()
	err := st.Update(func(tx store.Tx) error {
		cs, err := store.List[proto.AuditCheckpoint](tx, store.AuditCheckpoints)
		if err != nil {
			return err
		}
		for _, c := range cs {
			var e proto.AuditEvent
			if err := store.Get(tx, store.Audit, auditKey(c.Seq), &e); err != nil {
				return err
			}
			if err := store.Put(tx, store.AuditCheckpoints, auditKey(c.Seq), proto.SignAuditCheckpoint(key, c.Seq, e.Hash, c.Time)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestAuditCheckpointsCatchRewrite: with signed checkpoints, cutting off
// the tail of the log or rewriting and rehashing it fails verification,
// which a chain that only hashes itself cannot catch.
func TestAuditCheckpointsCatchRewrite(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	key := newAuditKey(t)
	pub := key.Public().(ed25519.PublicKey)
	attacker := newAuditKey(t)
	tests := []struct {
		name string
		// tamper changes the store that holds records 1 to 15, stored
		// checkpoints of records 10 and 15; exported is the one of 15.
		tamper func(t *testing.T, st store.Store)
		// key is the key the verification trusts: the coordinator's
		// unless the attacker replaced the key file.
		key ed25519.PublicKey
		// against selects the exported checkpoint.
		against bool
		badSeq  uint64
		problem string
	}{
		{"intact", func(*testing.T, store.Store) {}, pub, false, 0, ""},
		{"intact against the export", func(*testing.T, store.Store) {}, pub, true, 0, ""},
		{"tail cut, checkpoint left", func(t *testing.T, st store.Store) { truncateAudit(t, st, 12) }, pub, false, 13, "cut off the end"},
		{"tail cut, checkpoints deleted", func(t *testing.T, st store.Store) {
			truncateAudit(t, st, 12)
			dropCheckpoints(t, st, 11)
		}, pub, true, 13, "the exported checkpoint"},
		{"rewritten and rehashed", func(t *testing.T, st store.Store) { rewriteAudit(t, st, 3) }, pub, false, 10, "differs from the checkpoint signed at"},
		{"rewritten, checkpoints re-signed with another key", func(t *testing.T, st store.Store) {
			rewriteAudit(t, st, 3)
			resign(t, st, attacker)
		}, pub, false, 10, "signed by key"},
		{"rewritten, checkpoint hash edited", func(t *testing.T, st store.Store) {
			rewriteAudit(t, st, 3)
			err := st.Update(func(tx store.Tx) error {
				var c proto.AuditCheckpoint
				if err := store.Get(tx, store.AuditCheckpoints, auditKey(10), &c); err != nil {
					return err
				}
				var e proto.AuditEvent
				if err := store.Get(tx, store.Audit, auditKey(10), &e); err != nil {
					return err
				}
				c.Hash = e.Hash
				return store.Put(tx, store.AuditCheckpoints, auditKey(10), c)
			})
			if err != nil {
				t.Fatal(err)
			}
		}, pub, false, 10, "signature does not match"},
		{"rewritten, checkpoints deleted", func(t *testing.T, st store.Store) {
			rewriteAudit(t, st, 3)
			dropCheckpoints(t, st, 0)
		}, pub, true, 15, "differs from the exported checkpoint"},
		{"rewritten, re-signed, key file replaced", func(t *testing.T, st store.Store) {
			rewriteAudit(t, st, 3)
			resign(t, st, attacker)
		}, attacker.Public().(ed25519.PublicKey), true, 15, "signed by key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := openTestStore(t)
			fillAudit(t, st, start, 10)
			mustSign(t, st, key, start.Add(10*time.Hour))
			fillAudit(t, st, start.Add(10*time.Hour), 5)
			exported := mustSign(t, st, key, start.Add(15*time.Hour))
			tt.tamper(t, st)
			o := AuditVerifyOptions{Key: tt.key}
			if tt.against {
				o.Against = &exported
			}
			v, err := VerifyAudit(st, o)
			if err != nil {
				t.Fatal(err)
			}
			if tt.badSeq == 0 {
				if !v.OK || v.Checked != 15 || v.Checkpoints != 2 || v.SignedSeq != 15 || v.Key != proto.AuditKeyID(pub) {
					t.Fatalf("intact log: %+v", v)
				}
				return
			}
			if v.OK || v.BadSeq != tt.badSeq || !strings.Contains(v.Problem, tt.problem) {
				t.Fatalf("verify = %+v, want record %d named (%q)", v, tt.badSeq, tt.problem)
			}
			// The chain alone, as it was checked before checkpoints,
			// finds nothing wrong: only a signature catches this.
			if v, err := VerifyAudit(st, AuditVerifyOptions{}); err != nil || !v.OK {
				t.Fatalf("chain-only verify of %q = %+v, %v; the tampering should keep the chain whole", tt.name, v, err)
			}
		})
	}
}

// TestAuditCheckpointsAndRetention: retention removes the checkpoints of
// the records it removes; the rest still verify, and an exported
// checkpoint of a pruned record is reported as such.
func TestAuditCheckpointsAndRetention(t *testing.T) {
	st := openTestStore(t)
	key := newAuditKey(t)
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var marks []proto.AuditCheckpoint
	for i := range 4 { // 4 × 18 records, a checkpoint after each run
		fillAudit(t, st, start.Add(time.Duration(18*i)*time.Hour), 18)
		marks = append(marks, mustSign(t, st, key, start.Add(time.Duration(18*(i+1))*time.Hour)))
	}
	// Day 1 goes: records 1-24, with the checkpoint of 18.
	if n, err := pruneAudit(st, 48*time.Hour, start.Add(3*24*time.Hour+12*time.Hour)); err != nil || n != 24 {
		t.Fatalf("prune = %d, %v; want 24", n, err)
	}
	o := AuditVerifyOptions{Key: key.Public().(ed25519.PublicKey), Against: &marks[1]}
	v, err := VerifyAudit(st, o)
	if err != nil || !v.OK || v.Checkpoints != 3 || v.SignedSeq != 72 || v.First != 25 {
		t.Fatalf("after prune: %+v, %v", v, err)
	}
	o.Against = &marks[0]
	if v, _ := VerifyAudit(st, o); v.OK || v.BadSeq != 18 || !strings.Contains(v.Problem, "pruned by retention") {
		t.Fatalf("against a pruned record: %+v", v)
	}
}

// TestAuditCheckpointsInServer: the coordinator keeps its checkpoint key
// in a file of its own, signs at start and at close, exports a
// checkpoint to an administrator, verifies against it online, and a store
// cut back below it fails offline.
func TestAuditCheckpointsInServer(t *testing.T) {
	e := newAccessEnv(t)
	keyPath := filepath.Join(e.dir, AuditKeyFile)
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("checkpoint key file: %v, %v; want mode 0600", fi, err)
	}
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
	v, err := VerifyAuditDir(e.dir, &ck)
	if err != nil || !v.OK || v.SignedSeq != v.Last || v.Last <= ck.Seq {
		t.Fatalf("offline verify after close = %+v, %v; want the last record signed", v, err)
	}
	// Cut the log back below the export and remove every trace of it.
	st, err := store.OpenBolt(filepath.Join(e.dir, "coordinator.db"))
	if err != nil {
		t.Fatal(err)
	}
	truncateAudit(t, st, ck.Seq-1)
	dropCheckpoints(t, st, 0)
	st.Close()
	if v, err := VerifyAuditDir(e.dir, nil); err != nil || !v.OK {
		t.Fatalf("offline verify without the export = %+v, %v (nothing in the store is left to catch it)", v, err)
	}
	v, err = VerifyAuditDir(e.dir, &ck)
	if err != nil || v.OK || v.BadSeq != ck.Seq || !strings.Contains(v.Problem, "cut off") {
		t.Fatalf("offline verify against the export = %+v, %v", v, err)
	}
	// Without the key file a copy of the store is checked with the key of
	// the export; without either, the error says what to give.
	os.Remove(keyPath)
	if v, err := VerifyAuditDir(e.dir, &ck); err != nil || v.OK || v.Key != ck.KeyID() {
		t.Fatalf("offline verify of a copy = %+v, %v", v, err)
	}
	if _, err := VerifyAuditDir(e.dir, nil); err == nil || !strings.Contains(err.Error(), "--checkpoint") {
		t.Fatalf("offline verify without key or export: %v", err)
	}
}

// TestAuditIngestStampsAgent: what an agent sends is stored with the
// agent's identity, not the one the event claims, and with a time no
// later than 5 minutes after the coordinator's clock.
func TestAuditIngestStampsAgent(t *testing.T) {
	e := newAccessEnv(t)
	var agent proto.RegisterResponse
	e.must("POST", "/api/v1/agents", e.joinToken, proto.RegisterAgentRequest{PublicKey: newKey(t), CSR: newCSR(t)}, &agent)
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
			if got.Time.After(after.Add(maxAuditSkew)) {
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

// TestAuditPruneMisdatedRecord: one record dated years ahead, stored
// before the ingest bounded the skew or while the coordinator's clock was
// wrong, does not stop retention for the records behind it; it goes with
// the first correctly dated record after it.
func TestAuditPruneMisdatedRecord(t *testing.T) {
	st := openTestStore(t)
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fillAudit(t, st, start, 24)                     // day 1: 1-24
	fillAudit(t, st, start.AddDate(3, 0, 0), 1)     // 25, years ahead
	fillAudit(t, st, start.Add(24*time.Hour), 24)   // day 2: 26-49
	fillAudit(t, st, start.Add(48*time.Hour), 24)   // day 3: 50-73
	fillAudit(t, st, start.AddDate(5, 0, 0), 1)     // 74, years ahead
	now := start.Add(4*24*time.Hour + 12*time.Hour) // day 5 noon
	n, err := pruneAudit(st, 48*time.Hour, now)     // cutoff: day 3
	if err != nil || n != 49 {
		t.Fatalf("pruned %d records, %v; want 49 (days 1 and 2 and the misdated one between)", n, err)
	}
	v := mustVerify(t, st)
	if !v.OK || v.First != 50 || v.Last != 74 {
		t.Fatalf("after prune: %+v", v)
	}
	// The misdated record at the end stays until a record after it is
	// old enough.
	if n, err := pruneAudit(st, 48*time.Hour, start.Add(10*24*time.Hour)); err != nil || n != 24 {
		t.Fatalf("second prune = %d, %v; want day 3 only", n, err)
	}
	if v := mustVerify(t, st); !v.OK || v.First != 74 {
		t.Fatalf("after the second prune: %+v", v)
	}
}

func TestLoadAuditKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", AuditKeyFile)
	if _, err := loadAuditKey(path, false); err == nil {
		t.Fatal("a missing key loaded without create")
	}
	k1, err := loadAuditKey(path, true)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := loadAuditKey(path, true)
	if err != nil || !k1.Equal(k2) {
		t.Fatalf("the key changed on the second load: %v", err)
	}
	for name, content := range map[string]string{
		"not PEM":   "hello",
		"not a key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o600)
		if _, err := loadAuditKey(p, true); err == nil || !strings.Contains(err.Error(), "audit checkpoint key") {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

// The checkpoint document is stable: what a coordinator signs today
// verifies tomorrow.
func TestAuditCheckpointJSON(t *testing.T) {
	c := proto.SignAuditCheckpoint(newAuditKey(t), 7, strings.Repeat("ab", 32), time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600)))
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	got, err := proto.ParseAuditCheckpoint(b)
	if err != nil || got.Seq != 7 {
		t.Fatalf("parse %s: %+v %v", b, got, err)
	}
}

// TestAuditSignerSignsPeriodically: while the log grows, the coordinator
// signs a checkpoint of its head every AuditCheckpointInterval, without
// anyone asking.
func TestAuditSignerSignsPeriodically(t *testing.T) {
	srv, err := New(context.Background(), Config{DataDir: t.TempDir(), AuditCheckpointInterval: time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	pub := srv.auditKey.Public().(ed25519.PublicKey)
	for round := range 2 {
		srv.audit(proto.AuditEvent{Code: proto.AuditAgentRefused, Actor: fmt.Sprint("round", round), Outcome: proto.OutcomeFailure})
		deadline := time.Now().Add(10 * time.Second)
		for {
			v, err := VerifyAudit(srv.store, AuditVerifyOptions{Key: pub})
			if err != nil || !v.OK {
				t.Fatalf("verify = %+v, %v", v, err)
			}
			if v.Last == uint64(round+1) && v.SignedSeq == v.Last && v.Checkpoints == round+1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: no checkpoint of the head after 10s: %+v", round, v)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
