package coordinator

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// memStore is a Store in maps, for fuzzing the audit code without a file
// per input. Update works on a copy and keeps it only if fn succeeds.
type memStore struct {
	mu sync.Mutex
	b  map[store.Bucket]map[string][]byte
	n  map[store.Bucket]uint64
}

func newMemStore() *memStore {
	return &memStore{b: map[store.Bucket]map[string][]byte{}, n: map[store.Bucket]uint64{}}
}

type memTx struct {
	s  *memStore
	ro bool
}

func (s *memStore) View(fn func(store.Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fn(memTx{s, true})
}

func (s *memStore) Update(fn func(store.Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, oldN := map[store.Bucket]map[string][]byte{}, maps.Clone(s.n)
	for k, v := range s.b {
		old[k] = maps.Clone(v)
	}
	if err := fn(memTx{s, false}); err != nil {
		s.b, s.n = old, oldN
		return err
	}
	return nil
}

func (*memStore) Backup(string) error               { return errors.New("not supported") }
func (*memStore) Close() error                      { return nil }
func (*memStore) BackupTo(io.Writer) (int64, error) { return 0, errors.New("not supported") }

var _ store.Store = (*memStore)(nil)

func (t memTx) GetRaw(b store.Bucket, key string) ([]byte, error) {
	v, ok := t.s.b[b][key]
	if !ok {
		return nil, store.ErrNotFound
	}
	return slices.Clone(v), nil
}

func (t memTx) PutRaw(b store.Bucket, key string, value []byte) error {
	if t.ro {
		return errors.New("read-only transaction")
	}
	if t.s.b[b] == nil {
		t.s.b[b] = map[string][]byte{}
	}
	t.s.b[b][key] = slices.Clone(value)
	return nil
}

func (t memTx) Delete(b store.Bucket, key string) error {
	if t.ro {
		return errors.New("read-only transaction")
	}
	delete(t.s.b[b], key)
	return nil
}

func (t memTx) ForEach(b store.Bucket, fn func(string, []byte) error) error {
	for _, k := range slices.Sorted(maps.Keys(t.s.b[b])) {
		if err := fn(k, t.s.b[b][k]); err != nil {
			return err
		}
	}
	return nil
}

func (t memTx) NextSequence(b store.Bucket) (uint64, error) {
	t.s.n[b]++
	return t.s.n[b], nil
}

var fuzzNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// FuzzAuditBatch feeds arbitrary bodies of POST /api/v1/audit/events
// through what the handler does with them: decode, stamp each event as
// the agent's and append it to the chain. Whatever an agent sends, the
// coordinator must not panic, and what it stores must be stamped with the
// agent's identity, dated no later than the skew allows, decode to what
// was hashed, and verify.
func FuzzAuditBatch(f *testing.F) {
	for _, s := range []string{
		`{"source":"spool1","events":[{"code":"RQ001I","time":"2026-06-01T11:59:00Z","actor":"alice@example.com","source_seq":1,"resource":{"verb":"get","resource":"pods","namespace":"dev","name":"web","path":"/api/v1/namespaces/dev/pods/web"},"status":200,"bytes":512,"latency":"1.5ms"}]}`,
		`{"source":"spool1","events":[{"code":"DN001W","time":"2029-06-01T00:00:00Z","actor":"system","source_seq":2,"error":"NO_ROLE_ASSIGNMENT","metadata":{"agent":"agt_x","agent_time":"x"}}]}`,
		`{"source":"s","events":[{"code":"AG006E","time":"0001-01-01T00:00:00+23:59","source_seq":3,"metadata":{"dropped":"10"}}]}`,
		`{"source":"s","events":[{"code":"RQ003I","time":"9999-12-31T23:59:59-23:59","actor":"agent:other","source_seq":4,"cluster":"forged","seq":7,"hash":"00","prev_hash":"11"}]}`,
		`{"source":"s","events":[{"code":"RL001I","source_seq":5}]}`,
		`{"source":"s","events":[{"code":"RQ002W","time":"1969-12-31T23:59:59Z","actor":"\u00ff\ufffd","source_seq":6,"latency":"-5s"}]}`,
		`{"source":"s","events":[]}`,
		`{"events":[{"source_seq":1}]}`,
		`not json`,
	} {
		f.Add([]byte(s))
	}
	a := agentStamp{node: "agt_0123456789abcdef0123", cluster: "prod", source: "spool1"}
	f.Fuzz(func(t *testing.T, body []byte) {
		var b proto.AuditBatch
		if json.Unmarshal(body, &b) != nil {
			return
		}
		st := newMemStore()
		var stored []proto.AuditEvent
		for _, e := range b.Events {
			got, _, err := stampAgentEvent(e, a, fuzzNow)
			if err != nil {
				var bad errBadBatch
				if !errors.As(err, &bad) {
					t.Fatalf("stamp %+v: %v is not the caller's mistake", e, err)
				}
				continue
			}
			switch {
			case got.Cluster != a.cluster, got.Source != a.source, got.Metadata["agent"] != a.node:
				t.Fatalf("stamped %+v, not with the agent's identity", got)
			case got.Time.After(fuzzNow.Add(maxAuditSkew)), got.Time.Before(minAuditTime):
				t.Fatalf("stamped with time %s", got.Time)
			case got.Actor == "system", got.Actor == "anonymous", strings.HasPrefix(got.Actor, "device:"),
				strings.HasPrefix(got.Actor, "agent:") && got.Actor != "agent:prod":
				t.Fatalf("stamped with actor %q", got.Actor)
			case got.Seq != 0, got.Hash != "", got.PrevHash != "":
				t.Fatalf("chain fields kept: %+v", got)
			}
			err = st.Update(func(tx store.Tx) error {
				e, err := appendAudit(tx, got)
				stored = append(stored, e)
				return err
			})
			if err != nil {
				t.Fatalf("append %+v: %v", got, err)
			}
		}
		for _, e := range stored {
			var back proto.AuditEvent
			raw, _ := memTx{st, true}.GetRaw(store.Audit, auditKey(e.Seq))
			if err := json.Unmarshal(raw, &back); err != nil {
				t.Fatalf("stored record %s does not decode: %v", raw, err)
			}
			if proto.AuditHash(back) != e.Hash {
				t.Fatalf("stored record %s does not hash to %s", raw, e.Hash)
			}
		}
		if v, err := VerifyAudit(st, AuditVerifyOptions{}); err != nil || !v.OK || v.Checked != len(stored) {
			t.Fatalf("verify after %d appends = %+v, %v", len(stored), v, err)
		}
	})
}

// FuzzAuditRecord feeds arbitrary stored records and checkpoints to
// verification, as someone who can write the store could: it must
// answer, not panic, and call the log intact only if the record is the
// one that was appended and the checkpoint is the coordinator's.
func FuzzAuditRecord(f *testing.F) {
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	good := newMemStore()
	var e proto.AuditEvent
	good.Update(func(tx store.Tx) error {
		var err error
		e, err = appendAudit(tx, proto.AuditEvent{Code: proto.AuditRequest, Time: fuzzNow, Actor: "alice@example.com", Status: 200})
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
		st := newMemStore()
		st.Update(func(tx store.Tx) error {
			tx.PutRaw(store.Audit, auditKey(1), record)
			tx.PutRaw(store.AuditCheckpoints, auditKey(1), checkpoint)
			return store.Put(tx, store.Meta, metaAuditHead, auditMark{Seq: 1, Hash: e.Hash})
		})
		v, err := VerifyAudit(st, AuditVerifyOptions{Key: key.Public().(ed25519.PublicKey)})
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
