package auditlog

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/coordinator/store/storetest"
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
		c, err = SignCheckpoint(tx, key, now)
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
	editLog(t, st, func(tx store.Tx, head Mark) error {
		for s := seq + 1; s <= head.Seq; s++ {
			if err := tx.Delete(store.Audit, Key(s)); err != nil {
				return err
			}
		}
		var e proto.AuditEvent
		if err := store.Get(tx, store.Audit, Key(seq), &e); err != nil {
			return err
		}
		return store.Put(tx, store.Meta, MetaHead, Mark{Seq: seq, Hash: e.Hash})
	})
}

// rewriteAudit changes the actor of record seq and rehashes it and every
// record after it, and the head: a chain that verifies on its own.
func rewriteAudit(t *testing.T, st store.Store, seq uint64) {
	t.Helper()
	editLog(t, st, func(tx store.Tx, head Mark) error {
		prev := ""
		if seq > 1 {
			var e proto.AuditEvent
			if err := store.Get(tx, store.Audit, Key(seq-1), &e); err != nil {
				return err
			}
			prev = e.Hash
		}
		for s := seq; s <= head.Seq; s++ {
			var e proto.AuditEvent
			if err := store.Get(tx, store.Audit, Key(s), &e); err != nil {
				return err
			}
			if s == seq {
				e.Actor = "someone-else@example.com"
			}
			e.PrevHash = prev
			e.Hash = proto.AuditHash(e)
			prev = e.Hash
			if err := store.Put(tx, store.Audit, Key(s), e); err != nil {
				return err
			}
		}
		return store.Put(tx, store.Meta, MetaHead, Mark{Seq: head.Seq, Hash: prev})
	})
}

// editLog runs edit on st's audit log in one transaction, with the log's
// head, and fails t if that fails.
func editLog(t *testing.T, st store.Store, edit func(tx store.Tx, head Mark) error) {
	t.Helper()
	err := st.Update(func(tx store.Tx) error {
		head, err := Head(tx)
		if err != nil {
			return err
		}
		return edit(tx, head)
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
			if k >= Key(from) {
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
			if err := store.Get(tx, store.Audit, Key(c.Seq), &e); err != nil {
				return err
			}
			if err := store.Put(tx, store.AuditCheckpoints, Key(c.Seq), proto.SignAuditCheckpoint(key, c.Seq, e.Hash, c.Time)); err != nil {
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
				if err := store.Get(tx, store.AuditCheckpoints, Key(10), &c); err != nil {
					return err
				}
				var e proto.AuditEvent
				if err := store.Get(tx, store.Audit, Key(10), &e); err != nil {
					return err
				}
				c.Hash = e.Hash
				return store.Put(tx, store.AuditCheckpoints, Key(10), c)
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
			st := storetest.OpenBolt(t)
			fillAudit(t, st, start, 10)
			mustSign(t, st, key, start.Add(10*time.Hour))
			fillAudit(t, st, start.Add(10*time.Hour), 5)
			exported := mustSign(t, st, key, start.Add(15*time.Hour))
			tt.tamper(t, st)
			o := VerifyOptions{Key: tt.key}
			if tt.against {
				o.Against = &exported
			}
			v, err := Verify(st, o)
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
			if v, err := Verify(st, VerifyOptions{}); err != nil || !v.OK {
				t.Fatalf("chain-only verify of %q = %+v, %v; the tampering should keep the chain whole", tt.name, v, err)
			}
		})
	}
}

// TestAuditCheckpointsAndRetention: retention removes the checkpoints of
// the records it removes; the rest still verify, and an exported
// checkpoint of a pruned record is reported as such.
func TestAuditCheckpointsAndRetention(t *testing.T) {
	st := storetest.OpenBolt(t)
	key := newAuditKey(t)
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var marks []proto.AuditCheckpoint
	for i := range 4 { // 4 × 18 records, a checkpoint after each run
		fillAudit(t, st, start.Add(time.Duration(18*i)*time.Hour), 18)
		marks = append(marks, mustSign(t, st, key, start.Add(time.Duration(18*(i+1))*time.Hour)))
	}
	// Day 1 goes: records 1-24, with the checkpoint of 18.
	if n, err := Prune(st, 48*time.Hour, start.Add(3*24*time.Hour+12*time.Hour)); err != nil || n != 24 {
		t.Fatalf("prune = %d, %v; want 24", n, err)
	}
	o := VerifyOptions{Key: key.Public().(ed25519.PublicKey), Against: &marks[1]}
	v, err := Verify(st, o)
	if err != nil || !v.OK || v.Checkpoints != 3 || v.SignedSeq != 72 || v.First != 25 {
		t.Fatalf("after prune: %+v, %v", v, err)
	}
	o.Against = &marks[0]
	if v, _ := Verify(st, o); v.OK || v.BadSeq != 18 || !strings.Contains(v.Problem, "pruned by retention") {
		t.Fatalf("against a pruned record: %+v", v)
	}
}

// TestAuditPruneMisdatedRecord: one record dated years ahead, stored
// before the ingest bounded the skew or while the coordinator's clock was
// wrong, does not stop retention for the records behind it; it goes with
// the first correctly dated record after it.
func TestAuditPruneMisdatedRecord(t *testing.T) {
	st := storetest.OpenBolt(t)
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fillAudit(t, st, start, 24)                     // day 1: 1-24
	fillAudit(t, st, start.AddDate(3, 0, 0), 1)     // 25, years ahead
	fillAudit(t, st, start.Add(24*time.Hour), 24)   // day 2: 26-49
	fillAudit(t, st, start.Add(48*time.Hour), 24)   // day 3: 50-73
	fillAudit(t, st, start.AddDate(5, 0, 0), 1)     // 74, years ahead
	now := start.Add(4*24*time.Hour + 12*time.Hour) // day 5 noon
	n, err := Prune(st, 48*time.Hour, now)          // cutoff: day 3
	if err != nil || n != 49 {
		t.Fatalf("pruned %d records, %v; want 49 (days 1 and 2 and the misdated one between)", n, err)
	}
	v := mustVerify(t, st)
	if !v.OK || v.First != 50 || v.Last != 74 {
		t.Fatalf("after prune: %+v", v)
	}
	// The misdated record at the end stays until a record after it is
	// old enough.
	if n, err := Prune(st, 48*time.Hour, start.Add(10*24*time.Hour)); err != nil || n != 24 {
		t.Fatalf("second prune = %d, %v; want day 3 only", n, err)
	}
	if v := mustVerify(t, st); !v.OK || v.First != 74 {
		t.Fatalf("after the second prune: %+v", v)
	}
}

// TestAuditPruneLongMisdatedRun: a run of misdated records longer than
// a commit of the store takes (a coordinator whose clock ran days ahead
// for a while) goes with the first correctly dated record after it, in
// as many commits as it takes, and the chain still verifies after each.
func TestAuditPruneLongMisdatedRun(t *testing.T) {
	mem := store.NewMem()
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fillAudit(t, mem, start, 24)                   // day 1: 1-24
	fillAudit(t, mem, start.AddDate(0, 0, 30), 60) // 25-84, a month ahead
	fillAudit(t, mem, start.Add(24*time.Hour), 24) // day 2: 85-108
	fillAudit(t, mem, start.Add(48*time.Hour), 24) // day 3: 109-132
	st := storetest.Limit(mem, 128)
	now := start.Add(4*24*time.Hour + 12*time.Hour) // day 5 noon
	n, err := Prune(st, 48*time.Hour, now)          // cutoff: day 3
	if err != nil || n != 108 {
		t.Fatalf("pruned %d records, %v; want 108 (days 1 and 2 and the misdated run between)", n, err)
	}
	if v := mustVerify(t, st); !v.OK || v.First != 109 || v.Last != 132 {
		t.Fatalf("after prune: %+v", v)
	}
}

func TestLoadAuditKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", KeyFile)
	if _, err := LoadKey(path, false); err == nil {
		t.Fatal("a missing key loaded without create")
	}
	k1, err := LoadKey(path, true)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadKey(path, true)
	if err != nil || !k1.Equal(k2) {
		t.Fatalf("the key changed on the second load: %v", err)
	}
	for name, content := range map[string]string{
		"not PEM":   "hello",
		"not a key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o600)
		if _, err := LoadKey(p, true); err == nil || !strings.Contains(err.Error(), "audit checkpoint key") {
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
