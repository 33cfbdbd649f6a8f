package auditlog

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// fillMixed appends n events with actors, clusters and codes drawn from
// small sets and times out of order over two days from start, as agents'
// spooled events arrive late.
func fillMixed(t *testing.T, st store.Store, r *rand.Rand, start time.Time, n int) {
	t.Helper()
	actors := []string{"alice", "Alice", "bob", "ſam", "Sam", "agent:prod", "a/b c"}
	clusters := []string{"", "prod", "staging", "x/y"}
	codes := []proto.AuditCode{proto.AuditRequest, proto.AuditLoginBrowser, proto.AuditRoleCreated, proto.AuditDeviceRegistered, proto.AuditAccessDenied}
	err := st.Update(func(tx store.Tx) error {
		for range n {
			e := proto.AuditEvent{Code: codes[r.IntN(len(codes))], Actor: actors[r.IntN(len(actors))], Cluster: clusters[r.IntN(len(clusters))],
				Time: start.Add(time.Duration(r.Int64N(int64(48 * time.Hour)))), Correlation: []string{"", "", "s-1", "s-2", "s/3"}[r.IntN(5)]}
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

// scanAll returns the seqs of the records f matches, read one by one, in
// sequence order.
func scanAll(t *testing.T, st store.Store, f *Filter) []uint64 {
	t.Helper()
	var out []uint64
	err := st.View(func(tx store.Tx) error {
		return tx.ForEach(store.Audit, func(k string, raw []byte) error {
			var e proto.AuditEvent
			if err := json.Unmarshal(raw, &e); err != nil {
				return err
			}
			if f.Match(&e) {
				out = append(out, e.Seq)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// pageAll follows Query's cursors to the end and returns the seqs.
func pageAll(t *testing.T, st store.Store, f *Filter, asc bool, limit int) []uint64 {
	t.Helper()
	var out []uint64
	cursor := ""
	for range 10_000 {
		p, err := Query(st, f, cursor, asc, limit)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range p.Events {
			out = append(out, e.Seq)
		}
		if p.Next == "" || asc && len(p.Events) == 0 {
			return out
		}
		cursor = p.Next
	}
	t.Fatal("Query did not come to an end")
	return nil
}

// indexEntriesOf returns every entry of the index.
func indexEntriesOf(t *testing.T, st store.Store) []string {
	t.Helper()
	var out []string
	err := st.View(func(tx store.Tx) error {
		return tx.ForEach(store.AuditIndex, func(k string, v []byte) error {
			out = append(out, k+"="+string(v))
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// dropIndex removes the index, as in a store written before it existed.
func dropIndex(t *testing.T, st store.Store) {
	t.Helper()
	err := st.Update(func(tx store.Tx) error {
		var keys []string
		if err := tx.ForEach(store.AuditIndex, func(k string, _ []byte) error {
			keys = append(keys, k)
			return nil
		}); err != nil {
			return err
		}
		for _, k := range keys {
			if err := tx.Delete(store.AuditIndex, k); err != nil {
				return err
			}
		}
		return tx.Delete(store.Meta, MetaIndex)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestAuditIndexMatchesScan pages through filtered queries on an indexed
// log, a log without its index, and the same log once BuildIndex is done,
// and checks each gives what a record-by-record scan finds, in both
// directions, across pruning.
func TestAuditIndexMatchesScan(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	st := store.NewMem()
	fillMixed(t, st, r, start, 700)
	// Prune the first day (records stop at the first one dated after it).
	if _, err := Prune(st, 24*time.Hour, start.Add(48*time.Hour)); err != nil {
		t.Fatal(err)
	}
	fillMixed(t, st, r, start.Add(24*time.Hour), 300)
	at := func(h int) time.Time { return start.Add(time.Duration(h) * time.Hour) }
	filters := []struct {
		name string
		f    Filter
	}{
		{"all", Filter{}},
		{"user", Filter{User: "alice"}},
		{"user folded", Filter{User: "SAM"}},
		{"user with slash", Filter{User: "A/B C"}},
		{"user unknown", Filter{User: "nobody"}},
		{"cluster", Filter{Cluster: "prod"}},
		{"cluster with slash", Filter{Cluster: "x/y"}},
		{"code", Filter{Codes: map[proto.AuditCode]bool{proto.AuditRequest: true}}},
		{"codes", Filter{Codes: map[proto.AuditCode]bool{proto.AuditRoleCreated: true, proto.AuditLoginBrowser: true}}},
		{"category", Filter{Categories: map[proto.AuditCategory]bool{proto.CategoryRequest: true}}},
		{"categories", Filter{Categories: map[proto.AuditCategory]bool{proto.CategoryAuth: true, proto.CategoryDenial: true}}},
		{"time", Filter{From: at(30), To: at(33).Add(17 * time.Minute)}},
		{"from", Filter{From: at(40).Add(time.Second)}},
		{"to", Filter{To: at(26)}},
		{"empty time range", Filter{From: at(100), To: at(101)}},
		{"user and time", Filter{User: "bob", From: at(27), To: at(45)}},
		{"user and cluster", Filter{User: "Alice", Cluster: "staging"}},
		{"correlation", Filter{Correlation: "s-1"}},
		{"correlation with slash", Filter{Correlation: "s/3"}},
		{"correlation and codes", Filter{Correlation: "s-2", Codes: map[proto.AuditCode]bool{proto.AuditRequest: true, proto.AuditAccessDenied: true}}},
		{"code and severity", Filter{Codes: map[proto.AuditCode]bool{proto.AuditAccessDenied: true}, Severities: map[string]bool{"W": true}}},
	}
	check := func(t *testing.T, stage string) {
		t.Helper()
		for _, tt := range filters {
			want := scanAll(t, st, &tt.f)
			desc := slices.Clone(want)
			slices.Reverse(desc)
			for _, limit := range []int{1, 7, 1000} {
				if got := pageAll(t, st, &tt.f, false, limit); !slices.Equal(got, desc) {
					t.Errorf("%s: %s newest first, %d a page: %d events %v, want %d %v", stage, tt.name, limit, len(got), head(got), len(desc), head(desc))
				}
				if got := pageAll(t, st, &tt.f, true, limit); !slices.Equal(got, want) {
					t.Errorf("%s: %s oldest first, %d a page: %d events %v, want %d %v", stage, tt.name, limit, len(got), head(got), len(want), head(want))
				}
			}
		}
	}
	check(t, "indexed")
	built := indexEntriesOf(t, st)
	dropIndex(t, st)
	check(t, "without index")
	var calls int
	n, err := BuildIndex(context.Background(), st, 64, func(done, total uint64) {
		calls++
		if done > total {
			t.Errorf("progress %d of %d", done, total)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 || calls < 2 {
		t.Fatalf("BuildIndex indexed %d records in %d batches, want all of them in several", n, calls)
	}
	if got := indexEntriesOf(t, st); !slices.Equal(got, built) {
		t.Fatalf("the built index has %d entries, the one Append kept %d", len(got), len(built))
	}
	check(t, "rebuilt")
	// Pruning everything leaves no entries behind.
	if _, err := Prune(st, time.Hour, start.Add(96*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := indexEntriesOf(t, st); len(got) != 0 {
		t.Fatalf("after pruning every record the index keeps %d entries: %v", len(got), head2(got))
	}
}

func head(s []uint64) []uint64 { return s[:min(len(s), 8)] }

func head2(s []string) string { return strings.Join(s[:min(len(s), 5)], " ") }

// TestAuditIndexFollowsLateRecords: an ascending cursor (the live tail)
// sees a record stored after it, even one dated before the time range's
// other records.
func TestAuditIndexFollowsLateRecords(t *testing.T) {
	st := store.NewMem()
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	fillAudit(t, st, start, 5) // hours 0..4, user0..2
	f := Filter{User: "user0", From: start, To: start.Add(24 * time.Hour)}
	p, err := Query(st, &f, "", false, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Events) != 2 || p.Follow == "" {
		t.Fatalf("first page = %d events, follow %q", len(p.Events), p.Follow)
	}
	fillAudit(t, st, start, 1) // user0 again, dated at hour 0
	p2, err := Query(st, &f, p.Follow, true, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(p2.Events) != 1 || p2.Events[0].Seq != 6 {
		t.Fatalf("follow page = %+v, want record 6", p2.Events)
	}
	p3, err := Query(st, &f, p2.Next, true, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(p3.Events) != 0 || p3.Next != p2.Next {
		t.Fatalf("second follow page = %d events, next %q (was %q)", len(p3.Events), p3.Next, p2.Next)
	}
}

func TestFoldKeyMatchesEqualFold(t *testing.T) {
	words := []string{"alice", "ALICE", "ſam", "SAM", "sam", "K", "k", "\u212a", "straße", "STRASSE", "Σίσυφος", "ΣΊΣΥΦΟΣ", "σίσυφοσ", "é", "É"}
	for _, a := range words {
		for _, b := range words {
			if got, want := foldKey(a) == foldKey(b), strings.EqualFold(a, b); got != want {
				t.Errorf("foldKey(%q) == foldKey(%q) is %v, EqualFold says %v", a, b, got, want)
			}
		}
	}
}

func ExampleBuildIndex() {
	st := store.NewMem()
	_ = st.Update(func(tx store.Tx) error {
		_, err := Append(tx, proto.AuditEvent{Code: proto.AuditRequest, Actor: "alice", Time: time.Unix(0, 0)})
		return err
	})
	n, err := BuildIndex(context.Background(), st, 1000, nil)
	fmt.Println(n, err)
	// Output: 0 <nil>
}
