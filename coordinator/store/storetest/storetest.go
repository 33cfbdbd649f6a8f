// Package storetest is the conformance suite of store.Store: every
// backend runs it, so the contract the coordinator relies on (atomic,
// serializable, durable when Update returns, consistent backups) holds the
// same on each.
package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/testkit"
)

// OpenBolt opens a new bbolt store in tb's temporary directory, closed
// when tb ends.
func OpenBolt(tb testing.TB) *store.Bolt {
	tb.Helper()
	s, err := store.OpenBolt(filepath.Join(tb.TempDir(), "coordinator.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// Run runs the suite. open must return a new, empty store for each call
// and arrange (t.Cleanup) for it to be closed.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"ReadYourWrites", testReadYourWrites},
		{"ForEachOrder", testForEachOrder},
		{"ForEachStops", testForEachStops},
		{"Scan", Scan},
		{"Delete", testDelete},
		{"UnknownBucket", testUnknownBucket},
		{"Atomicity", testAtomicity},
		{"IsolationCounter", testIsolationCounter},
		{"IsolationRangeInsert", testIsolationRangeInsert},
		{"IsolationRangeDelete", testIsolationRangeDelete},
		{"NextSequence", testNextSequence},
		{"ViewRefusesWrites", testViewRefusesWrites},
		{"BackupConsistency", testBackupConsistency},
		{"LargeValue", testLargeValue},
		{"ManyKeys", testManyKeys},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, open(t)) })
	}
}

func mustUpdate(t *testing.T, s store.Store, fn func(store.Tx) error) {
	t.Helper()
	if err := s.Update(fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func get(t *testing.T, s store.Store, b store.Bucket, key string) ([]byte, error) {
	t.Helper()
	var v []byte
	err := s.View(func(tx store.Tx) error {
		var err error
		v, err = tx.GetRaw(b, key)
		return err
	})
	return v, err
}

type kv struct{ k, v string }

func all(t *testing.T, s store.Store, b store.Bucket) []kv {
	t.Helper()
	var out []kv
	err := s.View(func(tx store.Tx) error {
		out = nil
		return tx.ForEach(b, func(k string, v []byte) error {
			out = append(out, kv{k, string(v)})
			return nil
		})
	})
	if err != nil {
		t.Fatalf("ForEach %s: %v", b, err)
	}
	return out
}

func testRoundTrip(t *testing.T, s store.Store) {
	type doc struct {
		Name string `json:"name"`
		N    int    `json:"n"`
	}
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := store.Put(tx, store.Users, "u1", doc{"alice", 1}); err != nil {
			return err
		}
		return tx.PutRaw(store.Meta, "raw", []byte("v1"))
	})
	var d doc
	if err := s.View(func(tx store.Tx) error { return store.Get(tx, store.Users, "u1", &d) }); err != nil {
		t.Fatal(err)
	}
	if d != (doc{"alice", 1}) {
		t.Fatalf("Get = %+v, want alice 1", d)
	}
	v, err := get(t, s, store.Meta, "raw")
	if err != nil || string(v) != "v1" {
		t.Fatalf("GetRaw = %q, %v; want v1", v, err)
	}
	v[0] = 'X' // the caller owns the slice
	if v, _ := get(t, s, store.Meta, "raw"); string(v) != "v1" {
		t.Fatalf("after changing a returned slice GetRaw = %q, want v1", v)
	}
	mustUpdate(t, s, func(tx store.Tx) error { return tx.PutRaw(store.Meta, "raw", []byte("v2")) })
	if v, _ := get(t, s, store.Meta, "raw"); string(v) != "v2" {
		t.Fatalf("after overwrite GetRaw = %q, want v2", v)
	}
	if _, err := get(t, s, store.Meta, "absent"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetRaw(absent) = %v, want ErrNotFound", err)
	}
	if _, err := get(t, s, store.Users, "raw"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a key of bucket meta is visible in users: %v", err)
	}
	mustUpdate(t, s, func(tx store.Tx) error { return tx.PutRaw(store.Meta, "empty", []byte{}) })
	if v, err := get(t, s, store.Meta, "empty"); err != nil || len(v) != 0 {
		t.Fatalf("empty value: GetRaw = %q, %v; want an empty value", v, err)
	}
}

func testReadYourWrites(t *testing.T, s store.Store) {
	mustUpdate(t, s, func(tx store.Tx) error {
		for _, k := range []string{"a", "c", "e"} {
			if err := tx.PutRaw(store.Roles, k, []byte("old-"+k)); err != nil {
				return err
			}
		}
		return nil
	})
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.PutRaw(store.Roles, "b", []byte("new-b")); err != nil {
			return err
		}
		if err := tx.PutRaw(store.Roles, "c", []byte("new-c")); err != nil {
			return err
		}
		if err := tx.Delete(store.Roles, "e"); err != nil {
			return err
		}
		if err := tx.PutRaw(store.Roles, "f", []byte("new-f")); err != nil {
			return err
		}
		if v, err := tx.GetRaw(store.Roles, "c"); err != nil || string(v) != "new-c" {
			return fmt.Errorf("GetRaw after PutRaw in the same Update = %q, %v; want new-c", v, err)
		}
		if _, err := tx.GetRaw(store.Roles, "e"); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("GetRaw after Delete in the same Update = %v, want ErrNotFound", err)
		}
		var got []kv
		err := tx.ForEach(store.Roles, func(k string, v []byte) error {
			got = append(got, kv{k, string(v)})
			return nil
		})
		if err != nil {
			return err
		}
		want := []kv{{"a", "old-a"}, {"b", "new-b"}, {"c", "new-c"}, {"f", "new-f"}}
		if !slices.Equal(got, want) {
			return fmt.Errorf("ForEach in the same Update = %v, want %v", got, want)
		}
		return nil
	})
	want := []kv{{"a", "old-a"}, {"b", "new-b"}, {"c", "new-c"}, {"f", "new-f"}}
	if got := all(t, s, store.Roles); !slices.Equal(got, want) {
		t.Fatalf("after commit ForEach = %v, want %v", got, want)
	}
}

func testForEachOrder(t *testing.T, s store.Store) {
	keys := []string{"b", "a", "a/b", "ab", "a0", "0001", "10", "9", "z", "Z", "a\x7f", "é"}
	rand.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	mustUpdate(t, s, func(tx store.Tx) error {
		for _, k := range keys {
			if err := tx.PutRaw(store.Audit, k, []byte(k)); err != nil {
				return err
			}
		}
		// A bucket whose name extends another's must stay apart.
		return tx.PutRaw(store.AuditSource, "x", []byte("src"))
	})
	got := all(t, s, store.Audit)
	want := slices.Clone(keys)
	slices.Sort(want) // byte order
	if len(got) != len(want) {
		t.Fatalf("ForEach returned %d keys, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].k != want[i] || got[i].v != want[i] {
			t.Fatalf("ForEach[%d] = %q=%q, want %q (keys in byte order)", i, got[i].k, got[i].v, want[i])
		}
	}
	if got := all(t, s, store.AuditSource); !slices.Equal(got, []kv{{"x", "src"}}) {
		t.Fatalf("ForEach(audit_src) = %v, want only x", got)
	}
}

// Scan checks Tx.Scan on s, which must be empty: ranges in both
// directions, bounds, StopScan, and in an Update the transaction's own
// writes. Every backend runs it through Run; a Store that cannot run
// all of Run (Mem) runs it alone.
func Scan(t *testing.T, s store.Store) {
	mustUpdate(t, s, func(tx store.Tx) error {
		for _, k := range []string{"a/1", "a/2", "a/3", "b/1", "b/2", "c"} {
			if err := tx.PutRaw(store.Roles, k, []byte("v"+k)); err != nil {
				return err
			}
		}
		return tx.PutRaw(store.Assignments, "a/9", nil) // another bucket
	})
	scan := func(tx store.Tx, from, to string, reverse bool, stopAt int) ([]string, error) {
		var got []string
		err := tx.Scan(store.Roles, from, to, reverse, func(k string, v []byte) error {
			if string(v) != "v"+k {
				return fmt.Errorf("key %s has value %q", k, v)
			}
			got = append(got, k)
			if len(got) == stopAt {
				return store.StopScan
			}
			return nil
		})
		return got, err
	}
	tests := []struct {
		from, to string
		reverse  bool
		stopAt   int
		want     []string
	}{
		{"a/", "a0", false, 0, []string{"a/1", "a/2", "a/3"}},
		{"a/", "a0", true, 0, []string{"a/3", "a/2", "a/1"}},
		{"a/2", "b/2", false, 0, []string{"a/2", "a/3", "b/1"}},
		{"a/2", "b/2", true, 0, []string{"b/1", "a/3", "a/2"}},
		{"", "", false, 0, []string{"a/1", "a/2", "a/3", "b/1", "b/2", "c"}},
		{"", "", true, 0, []string{"c", "b/2", "b/1", "a/3", "a/2", "a/1"}},
		{"b", "", true, 0, []string{"c", "b/2", "b/1"}},
		{"", "zz", true, 2, []string{"c", "b/2"}},
		{"a/", "a0", false, 1, []string{"a/1"}},
		{"d", "", false, 0, nil},
		{"d", "", true, 0, nil},
		{"a/4", "a/9", true, 0, nil},
	}
	err := s.View(func(tx store.Tx) error {
		for _, tt := range tests {
			got, err := scan(tx, tt.from, tt.to, tt.reverse, tt.stopAt)
			if err != nil {
				return err
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Scan [%q, %q) reverse=%v stop at %d = %q, want %q", tt.from, tt.to, tt.reverse, tt.stopAt, got, tt.want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("View: %v", err)
	}
	// In an Update, Scan sees the transaction's own writes.
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.Delete(store.Roles, "a/2"); err != nil {
			return err
		}
		if err := tx.PutRaw(store.Roles, "a/25", []byte("va/25")); err != nil {
			return err
		}
		for _, reverse := range []bool{false, true} {
			got, err := scan(tx, "a/", "a0", reverse, 0)
			if err != nil {
				return err
			}
			want := []string{"a/1", "a/25", "a/3"}
			if reverse {
				slices.Reverse(want)
			}
			if !slices.Equal(got, want) {
				t.Errorf("Scan in Update reverse=%v = %q, want %q (its own writes)", reverse, got, want)
			}
		}
		return nil
	})
	stop := errors.New("mine")
	err = s.View(func(tx store.Tx) error {
		return tx.Scan(store.Roles, "", "", false, func(string, []byte) error { return stop })
	})
	if !errors.Is(err, stop) {
		t.Fatalf("Scan = %v, want fn's error", err)
	}
}

func testForEachStops(t *testing.T, s store.Store) {
	mustUpdate(t, s, func(tx store.Tx) error {
		for i := range 10 {
			if err := tx.PutRaw(store.Nodes, strconv.Itoa(i), nil); err != nil {
				return err
			}
		}
		return nil
	})
	stop := errors.New("stop")
	n := 0
	err := s.View(func(tx store.Tx) error {
		return tx.ForEach(store.Nodes, func(string, []byte) error {
			n++
			if n == 3 {
				return stop
			}
			return nil
		})
	})
	if !errors.Is(err, stop) || n != 3 {
		t.Fatalf("ForEach = %v after %d calls, want stop after 3", err, n)
	}
}

func testDelete(t *testing.T, s store.Store) {
	mustUpdate(t, s, func(tx store.Tx) error { return tx.PutRaw(store.Clusters, "c", []byte("v")) })
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.Delete(store.Clusters, "c"); err != nil {
			return err
		}
		return tx.Delete(store.Clusters, "never-there")
	})
	if _, err := get(t, s, store.Clusters, "c"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after Delete GetRaw = %v, want ErrNotFound", err)
	}
	if got := all(t, s, store.Clusters); len(got) != 0 {
		t.Fatalf("after Delete ForEach = %v, want nothing", got)
	}
}

func testUnknownBucket(t *testing.T, s store.Store) {
	err := s.Update(func(tx store.Tx) error { return tx.PutRaw("no-such-bucket", "k", []byte("v")) })
	if err == nil {
		t.Fatal("PutRaw to an unknown bucket succeeded")
	}
	err = s.View(func(tx store.Tx) error {
		_, err := tx.GetRaw("no-such-bucket", "k")
		return err
	})
	if err == nil || errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetRaw from an unknown bucket = %v, want an error other than ErrNotFound", err)
	}
}

func testAtomicity(t *testing.T, s store.Store) {
	mustUpdate(t, s, func(tx store.Tx) error {
		if _, err := tx.NextSequence(store.Changes); err != nil {
			return err
		}
		return tx.PutRaw(store.Users, "keep", []byte("1"))
	})
	boom := errors.New("boom")
	err := s.Update(func(tx store.Tx) error {
		if err := tx.PutRaw(store.Users, "new", []byte("x")); err != nil {
			return err
		}
		if err := tx.PutRaw(store.Users, "keep", []byte("changed")); err != nil {
			return err
		}
		if err := tx.PutRaw(store.Roles, "r", []byte("x")); err != nil {
			return err
		}
		if _, err := tx.NextSequence(store.Changes); err != nil {
			return err
		}
		if err := tx.Delete(store.Users, "keep"); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want fn's error", err)
	}
	if got := all(t, s, store.Users); !slices.Equal(got, []kv{{"keep", "1"}}) {
		t.Fatalf("after a failed Update users = %v, want only keep=1", got)
	}
	if got := all(t, s, store.Roles); len(got) != 0 {
		t.Fatalf("after a failed Update roles = %v, want nothing", got)
	}
	var seq uint64
	mustUpdate(t, s, func(tx store.Tx) (err error) {
		seq, err = tx.NextSequence(store.Changes)
		return err
	})
	if seq != 2 {
		t.Fatalf("NextSequence after a failed Update = %d, want 2 (the failed one is not kept)", seq)
	}
}

// testIsolationCounter: concurrent read-modify-write of one key loses no
// increment.
func testIsolationCounter(t *testing.T, s store.Store) {
	const workers, each = 8, 25
	Concurrently(t, workers, each, func(int, int) (bool, error) {
		return true, s.Update(func(tx store.Tx) error {
			n := 0
			v, err := tx.GetRaw(store.Meta, "counter")
			switch {
			case errors.Is(err, store.ErrNotFound):
			case err != nil:
				return err
			default:
				if n, err = strconv.Atoi(string(v)); err != nil {
					return err
				}
			}
			return tx.PutRaw(store.Meta, "counter", []byte(strconv.Itoa(n+1)))
		})
	})
	v, err := get(t, s, store.Meta, "counter")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(v); got != strconv.Itoa(workers*each) {
		t.Fatalf("counter = %s after %d concurrent increments: an Update saw a stale value", got, workers*each)
	}
}

// testIsolationRangeInsert: a transaction that decides from a ForEach
// conflicts with one that adds a key to the bucket.
func testIsolationRangeInsert(t *testing.T, s store.Store) {
	const workers, each = 6, 15
	Concurrently(t, workers, each, func(int, int) (bool, error) {
		return true, s.Update(func(tx store.Tx) error {
			n := 0
			if err := tx.ForEach(store.Addresses, func(string, []byte) error { n++; return nil }); err != nil {
				return err
			}
			return tx.PutRaw(store.Addresses, fmt.Sprintf("%06d", n), nil)
		})
	})
	got := all(t, s, store.Addresses)
	if len(got) != workers*each {
		t.Fatalf("%d keys after %d Updates that each add the next one: two Updates counted the same bucket", len(got), workers*each)
	}
	for i, e := range got {
		if e.k != fmt.Sprintf("%06d", i) {
			t.Fatalf("key %d = %q, want %06d", i, e.k, i)
		}
	}
}

// testIsolationRangeDelete: a key found by ForEach and deleted is claimed
// by exactly one of the concurrent transactions that saw it.
func testIsolationRangeDelete(t *testing.T, s store.Store) {
	const keys, workers = 60, 6
	mustUpdate(t, s, func(tx store.Tx) error {
		for i := range keys {
			if err := tx.PutRaw(store.Requests, fmt.Sprintf("%04d", i), nil); err != nil {
				return err
			}
		}
		return nil
	})
	var (
		mu     sync.Mutex
		claims = map[string]int{}
	)
	Concurrently(t, workers, 0, func(int, int) (bool, error) {
		var got string
		err := s.Update(func(tx store.Tx) error {
			got = ""
			err := tx.ForEach(store.Requests, func(k string, _ []byte) error {
				got = k
				return errStop
			})
			if err != nil && !errors.Is(err, errStop) {
				return err
			}
			if got == "" {
				return nil
			}
			if err := tx.Delete(store.Requests, got); err != nil {
				return err
			}
			// Count in a key that is written but never read, so only
			// the range protects it.
			return tx.PutRaw(store.RequestArchive, got+"/"+strconv.FormatUint(rand.Uint64(), 16), nil)
		})
		if err != nil || got == "" {
			return false, err
		}
		mu.Lock()
		claims[got]++
		mu.Unlock()
		return true, nil
	})
	if arch := all(t, s, store.RequestArchive); len(arch) != keys {
		t.Fatalf("%d claims stored for %d keys: a key deleted by one Update was also claimed by another", len(arch), keys)
	}
	for k, n := range claims {
		if n != 1 {
			t.Errorf("key %s claimed %d times", k, n)
		}
	}
}

var errStop = errors.New("stop")

// Concurrently calls step on workers goroutines at once, each calling
// it times times (without limit if times is 0) or until it returns false
// or an error, and fails t with the errors once all have stopped. step
// gets its worker's number w and the call's number i on that worker.
func Concurrently(t *testing.T, workers, times int, step func(w, i int) (more bool, err error)) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := 0; times == 0 || i < times; i++ {
				more, err := step(w, i)
				if err != nil {
					errs <- err
					return
				}
				if !more {
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Update: %v", err)
	}
}

func testNextSequence(t *testing.T, s store.Store) {
	const workers, each = 6, 20
	var (
		mu  sync.Mutex
		got []uint64
	)
	Concurrently(t, workers, each, func(int, int) (bool, error) {
		var n uint64
		err := s.Update(func(tx store.Tx) (err error) {
			n, err = tx.NextSequence(store.Audit)
			if err != nil {
				return err
			}
			return tx.PutRaw(store.Audit, fmt.Sprintf("%020d", n), nil)
		})
		if err != nil {
			return false, err
		}
		mu.Lock()
		got = append(got, n)
		mu.Unlock()
		return true, nil
	})
	slices.Sort(got)
	for i, n := range got {
		if n != uint64(i+1) {
			t.Fatalf("sequences = %v, want 1..%d each once", got, workers*each)
		}
	}
	var a, b uint64
	mustUpdate(t, s, func(tx store.Tx) (err error) {
		if a, err = tx.NextSequence(store.Changes); err != nil {
			return err
		}
		b, err = tx.NextSequence(store.Changes)
		return err
	})
	if a != 1 || b != 2 {
		t.Fatalf("two NextSequence in one Update of a fresh bucket = %d, %d; want 1, 2 (sequences are per bucket)", a, b)
	}
}

func testViewRefusesWrites(t *testing.T, s store.Store) {
	mustUpdate(t, s, func(tx store.Tx) error { return tx.PutRaw(store.Meta, "k", []byte("v")) })
	for name, fn := range map[string]func(store.Tx) error{
		"PutRaw":       func(tx store.Tx) error { return tx.PutRaw(store.Meta, "k", []byte("w")) },
		"Delete":       func(tx store.Tx) error { return tx.Delete(store.Meta, "k") },
		"NextSequence": func(tx store.Tx) error { _, err := tx.NextSequence(store.Meta); return err },
	} {
		if err := s.View(fn); err == nil {
			t.Errorf("%s in View succeeded", name)
		}
	}
	if v, err := get(t, s, store.Meta, "k"); err != nil || string(v) != "v" {
		t.Fatalf("after refused writes GetRaw = %q, %v; want v", v, err)
	}
}

// testBackupConsistency takes backups while transfers between two keys
// keep their sum constant: a snapshot of one moment sees the sum.
func testBackupConsistency(t *testing.T, s store.Store) {
	const total = 1000
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.PutRaw(store.Meta, "a", []byte(strconv.Itoa(total))); err != nil {
			return err
		}
		if _, err := tx.NextSequence(store.Changes); err != nil {
			return err
		}
		return tx.PutRaw(store.Meta, "b", []byte("0"))
	})
	werr := make(chan error, 1)
	stop := testkit.Repeat(t, func(i int) bool {
		err := s.Update(func(tx store.Tx) error {
			a, b, err := getPair(tx)
			if err != nil {
				return err
			}
			d := 1 + i%7
			if i%2 == 1 {
				d = -d
			}
			if err := tx.PutRaw(store.Meta, "a", []byte(strconv.Itoa(a-d))); err != nil {
				return err
			}
			return tx.PutRaw(store.Meta, "b", []byte(strconv.Itoa(b+d)))
		})
		if err != nil {
			werr <- err
			return false
		}
		return true
	})
	dir := t.TempDir()
	for i := range 5 {
		var buf bytes.Buffer
		n, err := s.BackupTo(&buf)
		if err != nil {
			stop()
			t.Fatalf("BackupTo: %v", err)
		}
		if n != int64(buf.Len()) {
			t.Errorf("BackupTo reported %d bytes, wrote %d", n, buf.Len())
		}
		path := filepath.Join(dir, fmt.Sprintf("b%d.db", i))
		if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		checkBackup(t, path, total)
	}
	stop()
	select {
	case err := <-werr:
		t.Fatalf("writer: %v", err)
	default:
	}
	path := filepath.Join(dir, "file.db")
	if err := s.Backup(path); err != nil {
		t.Fatalf("Backup: %v", err)
	}
	testkit.CheckPerm(t, "backup", path, 0o600)
	checkBackup(t, path, total)
}

// getPair reads the two numbers testBackupConsistency moves between.
func getPair(tx store.Tx) (a, b int, err error) {
	av, err := tx.GetRaw(store.Meta, "a")
	if err != nil {
		return 0, 0, err
	}
	bv, err := tx.GetRaw(store.Meta, "b")
	if err != nil {
		return 0, 0, err
	}
	a, _ = strconv.Atoi(string(av))
	b, _ = strconv.Atoi(string(bv))
	return a, b, nil
}

// checkBackup opens a backup as a bbolt store, the way a restore does.
func checkBackup(t *testing.T, path string, total int) {
	t.Helper()
	if _, err := store.Verify(path); err != nil {
		t.Fatalf("backup does not verify: %v", err)
	}
	b, err := store.OpenBolt(path)
	if err != nil {
		t.Fatalf("open backup: %v", err)
	}
	defer b.Close()
	var a, c int
	var seq uint64
	err = b.Update(func(tx store.Tx) (err error) {
		if a, c, err = getPair(tx); err != nil {
			return err
		}
		seq, err = tx.NextSequence(store.Changes)
		return err
	})
	if err != nil {
		t.Fatalf("read backup: %v", err)
	}
	if a+c != total {
		t.Fatalf("backup has a=%d b=%d, sum %d, want %d: it mixes two moments", a, c, a+c, total)
	}
	if seq != 2 {
		t.Fatalf("NextSequence in the restored backup = %d, want 2 (the sequence is kept)", seq)
	}
}

func testLargeValue(t *testing.T, s store.Store) {
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(rand.IntN(256))
	}
	mustUpdate(t, s, func(tx store.Tx) error { return tx.PutRaw(store.Audit, "big", big) })
	v, err := get(t, s, store.Audit, "big")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(v, big) {
		t.Fatalf("large value came back different (%d bytes, want %d)", len(v), len(big))
	}
}

func testManyKeys(t *testing.T, s store.Store) {
	const n, batch = 3000, 100
	for i := 0; i < n; i += batch {
		mustUpdate(t, s, func(tx store.Tx) error {
			for j := i; j < i+batch; j++ {
				if err := tx.PutRaw(store.Nodes, fmt.Sprintf("node-%05d", j), []byte(strconv.Itoa(j))); err != nil {
					return err
				}
			}
			return nil
		})
	}
	got := all(t, s, store.Nodes)
	if len(got) != n {
		t.Fatalf("ForEach returned %d keys, want %d", len(got), n)
	}
	for i, e := range got {
		if e.k != fmt.Sprintf("node-%05d", i) || e.v != strconv.Itoa(i) {
			t.Fatalf("ForEach[%d] = %s=%s, want node-%05d=%d", i, e.k, e.v, i, i)
		}
	}
	// An Update that reads every key (more than one commit can compare
	// one by one) and changes one.
	mustUpdate(t, s, func(tx store.Tx) error {
		for i := range 300 {
			if _, err := tx.GetRaw(store.Nodes, fmt.Sprintf("node-%05d", i)); err != nil {
				return err
			}
		}
		return tx.PutRaw(store.Nodes, "node-00000", []byte("changed"))
	})
	if v, _ := get(t, s, store.Nodes, "node-00000"); string(v) != "changed" {
		t.Fatalf("after an Update reading every key node-00000 = %q, want changed", v)
	}
}
