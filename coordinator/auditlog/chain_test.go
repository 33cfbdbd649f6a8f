package auditlog

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/coordinator/store/storetest"
	"github.com/clustral/clustral/proto"
)

// fillAudit appends n events, one an hour from start.
func fillAudit(t *testing.T, st store.Store, start time.Time, n int) {
	t.Helper()
	err := st.Update(func(tx store.Tx) error {
		for i := range n {
			e := proto.AuditEvent{Code: proto.AuditRequest, Time: start.Add(time.Duration(i) * time.Hour), Actor: fmt.Sprintf("user%d", i%3),
				Resource: &proto.AuditResource{Verb: "get", Resource: "pods", Namespace: "default"}, Status: 200}
			if _, err := Append(tx, e); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func mustVerify(t *testing.T, st store.Store) proto.AuditVerification {
	t.Helper()
	v, err := Verify(st, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// editRecord rewrites record seq through fn, in place.
func editRecord(t *testing.T, st store.Store, seq uint64, fn func(*proto.AuditEvent)) {
	t.Helper()
	err := st.Update(func(tx store.Tx) error {
		var e proto.AuditEvent
		if err := store.Get(tx, store.Audit, Key(seq), &e); err != nil {
			return err
		}
		fn(&e)
		return store.Put(tx, store.Audit, Key(seq), e)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestAuditChain(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		tamper  func(t *testing.T, st store.Store)
		badSeq  uint64
		problem string
	}{
		{"intact", func(*testing.T, store.Store) {}, 0, ""},
		{"edited actor", func(t *testing.T, st store.Store) {
			editRecord(t, st, 5, func(e *proto.AuditEvent) { e.Actor = "nobody" })
		}, 5, "edited"},
		{"edited and rehashed", func(t *testing.T, st store.Store) {
			editRecord(t, st, 5, func(e *proto.AuditEvent) { e.Status = 403; e.Hash = proto.AuditHash(*e) })
		}, 6, "does not follow"},
		{"deleted in the middle", func(t *testing.T, st store.Store) {
			st.Update(func(tx store.Tx) error { return tx.Delete(store.Audit, Key(7)) })
		}, 7, "missing"},
		{"deleted at the end", func(t *testing.T, st store.Store) {
			st.Update(func(tx store.Tx) error { return tx.Delete(store.Audit, Key(10)) })
		}, 10, "missing"},
		{"last replaced", func(t *testing.T, st store.Store) {
			editRecord(t, st, 10, func(e *proto.AuditEvent) { e.Actor = "x"; e.Hash = proto.AuditHash(*e) })
		}, 10, "head"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := storetest.OpenBolt(t)
			fillAudit(t, st, start, 10)
			tt.tamper(t, st)
			v := mustVerify(t, st)
			if tt.badSeq == 0 {
				if !v.OK || v.Checked != 10 || v.First != 1 || v.Last != 10 {
					t.Fatalf("intact chain: %+v", v)
				}
				return
			}
			if v.OK || v.BadSeq != tt.badSeq || !strings.Contains(v.Problem, tt.problem) {
				t.Fatalf("verify = %+v, want record %d named (%q)", v, tt.badSeq, tt.problem)
			}
		})
	}
}

func TestAuditPruneKeepsChainValid(t *testing.T) {
	st := storetest.OpenBolt(t)
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fillAudit(t, st, start, 72) // three days, one event an hour
	// Now is day 4 noon; 2 days of retention cut before day 2 (Jan 2):
	// day 1 (24 records) goes whole.
	now := start.Add(3*24*time.Hour + 12*time.Hour)
	n, err := Prune(st, 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if n != 24 {
		t.Fatalf("pruned %d records, want 24 (one whole day)", n)
	}
	v := mustVerify(t, st)
	if !v.OK || v.First != 25 || v.Last != 72 || v.Anchor == "" {
		t.Fatalf("after prune: %+v", v)
	}
	if n, _ := Prune(st, 48*time.Hour, now); n != 0 {
		t.Fatalf("second prune removed %d", n)
	}
	// The chain goes on from the pruned log.
	fillAudit(t, st, now, 1)
	if v := mustVerify(t, st); !v.OK || v.Last != 73 {
		t.Fatalf("after append: %+v", v)
	}
	// Deleting the first remaining record is still caught.
	st.Update(func(tx store.Tx) error { return tx.Delete(store.Audit, Key(25)) })
	if v := mustVerify(t, st); v.OK || v.BadSeq != 25 {
		t.Fatalf("deleted first record after prune: %+v", v)
	}
}

func TestAuditQueryPagesAndFilters(t *testing.T) {
	st := storetest.OpenBolt(t)
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fillAudit(t, st, start, 25)
	f := Filter{}
	var got []uint64
	cursor := ""
	for {
		p, err := Query(st, &f, cursor, false, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range p.Events {
			got = append(got, e.Seq)
		}
		if p.Next == "" {
			break
		}
		cursor = p.Next
	}
	if len(got) != 25 || got[0] != 25 || got[24] != 1 {
		t.Fatalf("newest-first pages = %v", got)
	}
	q := url.Values{"user": {"user1"}, "from": {start.Add(10 * time.Hour).Format(time.RFC3339)}}
	f, err := ParseFilter(q)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Query(st, &f, "", true, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range p.Events {
		if e.Actor != "user1" || e.Time.Before(start.Add(10*time.Hour)) {
			t.Fatalf("filter let through %+v", e)
		}
	}
	if len(p.Events) != 5 { // 10,13,16,19,22 (0-based hours) are user1
		t.Fatalf("filtered %d events, want 5", len(p.Events))
	}
	// Following: the asc cursor sees only what comes later.
	fillAudit(t, st, start.Add(100*time.Hour), 2)
	p2, err := Query(st, &Filter{}, p.Next, true, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(p2.Events) != 2 || p2.Events[0].Seq != 26 {
		t.Fatalf("follow page = %+v", p2.Events)
	}
}

func TestAuditHashSurvivesStorage(t *testing.T) {
	// What is stored decodes to the event that was hashed.
	st := storetest.OpenBolt(t)
	err := st.Update(func(tx store.Tx) error {
		_, err := Append(tx, proto.AuditEvent{Code: proto.AuditRequest, Time: time.Now(), Latency: proto.Duration(1234567 * time.Nanosecond),
			Metadata: map[string]string{"z": "1", "a": "ü"}, Resource: &proto.AuditResource{Path: "/api/v1/pods"}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	st.View(func(tx store.Tx) error {
		raw, _ := tx.GetRaw(store.Audit, Key(1))
		var e proto.AuditEvent
		json.Unmarshal(raw, &e)
		if proto.AuditHash(e) != e.Hash {
			t.Fatalf("stored event does not hash to its hash: %s", raw)
		}
		return nil
	})
}

// TestAuditPruneHeld: a hold (an export destination's cursor) keeps the
// records after it however old they are, and pruning resumes when it
// moves.
func TestAuditPruneHeld(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := start.Add(3*24*time.Hour + 12*time.Hour) // day 1 is past retention
	for _, tt := range []struct {
		hold       uint64
		want, last uint64 // records pruned, the anchor after
	}{
		{hold: 0, want: 0},
		{hold: 10, want: 10, last: 10},
		{hold: 24, want: 24, last: 24},
		{hold: 60, want: 24, last: 24}, // retention still decides
	} {
		st := storetest.OpenBolt(t)
		fillAudit(t, st, start, 72)
		n, err := PruneHeld(st, 48*time.Hour, now, tt.hold)
		if err != nil || uint64(n) != tt.want {
			t.Fatalf("hold %d: pruned %d (%v), want %d", tt.hold, n, err, tt.want)
		}
		if v := mustVerify(t, st); !v.OK || v.First != tt.last+1 {
			t.Fatalf("hold %d: after prune %+v, want first %d", tt.hold, v, tt.last+1)
		}
	}
}

// TestAuditPruneFitsTheStoreCommits: on a store that bounds the keys of
// a commit (etcd), retention removes records and their index entries in
// as many commits as it takes.
func TestAuditPruneFitsTheStoreCommits(t *testing.T) {
	mem := store.NewMem()
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	fillAudit(t, mem, start, 200) // one an hour, over 8 days and a bit
	st := storetest.Limit(mem, 128)
	n, err := Prune(st, 48*time.Hour, start.Add(200*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if n < 100 {
		t.Fatalf("pruned %d records, want the days before the last two", n)
	}
	if v := mustVerify(t, st); !v.OK || v.First != uint64(n)+1 {
		t.Fatalf("after pruning %d: %+v", n, v)
	}
	for _, k := range indexEntriesOf(t, st) {
		if seq := k[strings.LastIndexByte(k, '/')+1:]; !strings.HasPrefix(k, "h/") && seq[:20] <= Key(uint64(n)) {
			t.Fatalf("the index keeps %s of a pruned record", k)
		}
	}
}

// TestAuditPruneCheckpointsFitTheStoreCommits: checkpoints of records
// before the anchor, more than a commit of the store takes (as a run that
// stopped between its commits leaves them), are removed in as many
// commits as it takes, whether or not records are pruned with them; the
// chain still verifies.
func TestAuditPruneCheckpointsFitTheStoreCommits(t *testing.T) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		days int // of records the limited Prune removes
	}{
		{"with records", 2},
		{"without records", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := store.NewMem()
			fillAudit(t, mem, start, 400) // one an hour
			if _, err := Prune(mem, 24*time.Hour, start.Add(8*24*time.Hour)); err != nil {
				t.Fatal(err)
			}
			const stale = 7 * 24 // the records of the days pruned
			err := mem.Update(func(tx store.Tx) error {
				for seq := uint64(1); seq <= stale; seq++ {
					if err := store.Put(tx, store.AuditCheckpoints, Key(seq), proto.AuditCheckpoint{Seq: seq}); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			st := storetest.Limit(mem, 128)
			n, err := Prune(st, 24*time.Hour, start.Add(time.Duration(8+tc.days)*24*time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			if want := 24 * tc.days; n != want {
				t.Fatalf("pruned %d records, want %d", n, want)
			}
			var left []string
			err = st.View(func(tx store.Tx) error {
				return tx.ForEach(store.AuditCheckpoints, func(k string, _ []byte) error {
					if k < Key(uint64(stale+n)) { // the anchor's own stays
						left = append(left, k)
					}
					return nil
				})
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(left) != 0 {
				t.Fatalf("%d checkpoints of pruned records left, first %s", len(left), left[0])
			}
			if v := mustVerify(t, st); !v.OK || v.First != uint64(stale+n)+1 {
				t.Fatalf("after pruning %d: %+v", n, v)
			}
		})
	}
}
