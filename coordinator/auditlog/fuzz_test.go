package auditlog

import (
	"crypto/ed25519"
	"encoding/json"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// fuzzNow is the time of the fuzzed records.
var fuzzNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// FuzzAuditRecord feeds arbitrary stored records and checkpoints to
// verification, as someone who can write the store could: it must
// answer, not panic, and call the log intact only if the record is the
// one that was appended and the checkpoint is the coordinator's.
func FuzzAuditRecord(f *testing.F) {
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	good := store.NewMem()
	var e proto.AuditEvent
	good.Update(func(tx store.Tx) error {
		var err error
		e, err = Append(tx, proto.AuditEvent{Code: proto.AuditRequest, Time: fuzzNow, Actor: "alice@example.com", Status: 200})
		return err
	})
	rec, _ := json.Marshal(e)
	ck, _ := json.Marshal(proto.SignAuditCheckpoint(key, 1, e.Hash, fuzzNow))
	f.Add(rec, ck)
	f.Add(rec, []byte(`{}`))
	f.Add([]byte(`{"seq":1,"code":"RQ001I","time":"2026-06-01T12:00:00Z","hash":"x"}`), ck)
	f.Add([]byte(`{"seq":1,"latency":"1h","metadata":{"a":"b"},"resource":{}}`), []byte(`{"seq":1,"hash":"","public_key":"","signature":""}`))
	f.Add([]byte(`null`), []byte(`null`))
	f.Add([]byte(`[`), []byte(`{"seq":18446744073709551615}`))
	f.Fuzz(func(t *testing.T, record, checkpoint []byte) {
		st := store.NewMem()
		st.Update(func(tx store.Tx) error {
			tx.PutRaw(store.Audit, Key(1), record)
			tx.PutRaw(store.AuditCheckpoints, Key(1), checkpoint)
			return store.Put(tx, store.Meta, MetaHead, Mark{Seq: 1, Hash: e.Hash})
		})
		v, err := Verify(st, VerifyOptions{Key: key.Public().(ed25519.PublicKey)})
		if err != nil {
			t.Fatalf("verify: %v", err)
		}
		if !v.OK {
			if v.Problem == "" {
				t.Fatalf("failed without a problem: %+v", v)
			}
			return
		}
		var got proto.AuditEvent
		if err := json.Unmarshal(record, &got); err != nil || got.Hash != e.Hash || proto.AuditHash(got) != e.Hash {
			t.Fatalf("record %s verified as the appended one", record)
		}
		if v.Checkpoints != 1 || v.SignedSeq != 1 {
			t.Fatalf("checkpoint %s verified as %+v", checkpoint, v)
		}
	})
}
