package storetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
)

// FeedOptions are what RunFeed needs besides an empty store.
type FeedOptions struct {
	// Compact makes the store forget its history up to its current
	// revision, as etcd's compaction does; it may write to the store.
	Compact func(t *testing.T, f store.Feed)
	// Replica, if set, opens a second handle on f's data, as a second
	// coordinator replica does; nil for a store with one writer.
	Replica func(t *testing.T, f store.Feed) store.Feed
	// GroupCommit says concurrent Updates may share one commit (Bolt's
	// group commit), so concurrent writers make at most one commit each
	// Update rather than exactly one.
	GroupCommit bool
}

// RunFeed runs the conformance suite of store.Feed: ordered, resumable,
// complete change feeds, compaction, and Superseded. open must return a
// new, empty store for each call and close it in t.Cleanup.
func RunFeed(t *testing.T, open func(t *testing.T) store.Feed, o FeedOptions) {
	tests := []struct {
		name string
		fn   func(*testing.T, store.Feed, FeedOptions)
	}{
		{"OrderAndContent", testFeedOrder},
		{"Resume", testFeedResume},
		{"Concurrent", testFeedConcurrent},
		{"Compacted", testFeedCompacted},
		{"SupersededOwn", testSupersededOwn},
		{"SupersededReplicas", testSupersededReplicas},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, open(t), o) })
	}
}

// currentRev returns f's revision now, the one a watch from it starts
// after.
func currentRev(t *testing.T, f store.Feed) int64 {
	t.Helper()
	rev, err := f.ViewRev(func(store.Tx) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// watcher collects a Watch's commits on a channel until the test ends.
type watcher struct {
	c    chan store.Commit
	done chan error
}

func watch(t *testing.T, f store.Feed, after int64) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{c: make(chan store.Commit, 1024), done: make(chan error, 1)}
	go func() {
		w.done <- f.Watch(ctx, after, func(c store.Commit) error {
			w.c <- c
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-w.done; !errors.Is(err, context.Canceled) {
			t.Errorf("Watch ended with %v, want context.Canceled", err)
		}
	})
	return w
}

// next returns the next commit, failing the test if none comes in time.
func (w *watcher) next(t *testing.T) store.Commit {
	t.Helper()
	select {
	case c := <-w.c:
		return c
	case err := <-w.done:
		t.Fatalf("Watch ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no commit from Watch within 10s")
	}
	return store.Commit{}
}

// none checks that no further commit arrives before a marker commit
// does.
func (w *watcher) none(t *testing.T, f store.Feed) {
	t.Helper()
	mustUpdate(t, f, func(tx store.Tx) error { return tx.PutRaw(store.Meta, "marker", []byte(time.Now().String())) })
	if c := w.next(t); len(c.Changes) != 1 || c.Changes[0].Key != "marker" {
		t.Fatalf("Watch delivered %s, want only the marker", describe(c))
	}
}

func describe(c store.Commit) string {
	var parts []string
	for _, ch := range c.Changes {
		if ch.Deleted {
			parts = append(parts, fmt.Sprintf("-%s/%s", ch.Bucket, ch.Key))
		} else {
			parts = append(parts, fmt.Sprintf("%s/%s=%s", ch.Bucket, ch.Key, ch.Value))
		}
	}
	return fmt.Sprintf("rev %d [%s]", c.Rev, strings.Join(parts, " "))
}

// feedWrites are the transactions testFeedOrder makes, with the commits
// each must produce (none for the last three: a failed Update, one that
// changes only a sequence, one that deletes an absent key).
func feedWrites(t *testing.T, f store.Feed) []string {
	t.Helper()
	mustUpdate(t, f, func(tx store.Tx) error {
		if err := tx.PutRaw(store.Users, "u1", []byte("alice")); err != nil {
			return err
		}
		return tx.PutRaw(store.Roles, "r1", []byte("view"))
	})
	mustUpdate(t, f, func(tx store.Tx) error {
		if err := tx.Delete(store.Users, "u1"); err != nil {
			return err
		}
		if err := tx.PutRaw(store.Users, "u2", []byte("bob")); err != nil {
			return err
		}
		if _, err := tx.NextSequence(store.Audit); err != nil {
			return err
		}
		return tx.PutRaw(store.Users, "u2", []byte("bob2")) // the last write wins
	})
	if err := f.Update(func(tx store.Tx) error {
		if err := tx.PutRaw(store.Users, "never", []byte("x")); err != nil {
			return err
		}
		return errStop
	}); !errors.Is(err, errStop) {
		t.Fatalf("failing Update = %v", err)
	}
	mustUpdate(t, f, func(tx store.Tx) error { _, err := tx.NextSequence(store.Changes); return err })
	mustUpdate(t, f, func(tx store.Tx) error { return tx.Delete(store.Clusters, "absent") })
	return []string{"[roles/r1=view users/u1=alice]", "[-users/u1 users/u2=bob2]"}
}

func testFeedOrder(t *testing.T, f store.Feed, _ FeedOptions) {
	rev0 := currentRev(t, f)
	w := watch(t, f, rev0)
	want := feedWrites(t, f)
	last := rev0
	for i, wc := range want {
		c := w.next(t)
		if c.Rev <= last {
			t.Fatalf("commit %d has revision %d after %d: not increasing", i, c.Rev, last)
		}
		last = c.Rev
		if got := describe(c); !strings.HasSuffix(got, wc) {
			t.Fatalf("commit %d = %s, want %s", i, got, wc)
		}
	}
	w.none(t, f)
	rev, err := f.ViewRev(func(tx store.Tx) error { _, err := tx.GetRaw(store.Users, "u2"); return err })
	if err != nil {
		t.Fatal(err)
	}
	if rev <= last {
		t.Fatalf("ViewRev after the commits = %d, want past %d", rev, last)
	}
}

func testFeedResume(t *testing.T, f store.Feed, _ FeedOptions) {
	rev0 := currentRev(t, f)
	w := watch(t, f, rev0)
	want := feedWrites(t, f)
	first, second := w.next(t), w.next(t)
	// From the first commit: only the second (and later) again.
	w2 := watch(t, f, first.Rev)
	if got := w2.next(t); describe(got) != describe(second) {
		t.Fatalf("resumed after %d: got %s, want %s", first.Rev, describe(got), describe(second))
	}
	// From the revision ViewRev gave before: both.
	w3 := watch(t, f, rev0)
	for i, c := range []store.Commit{first, second} {
		if got := w3.next(t); describe(got) != describe(c) {
			t.Fatalf("resumed after %d: commit %d = %s, want %s (%v)", rev0, i, describe(got), describe(c), want)
		}
	}
}

// testFeedConcurrent: concurrent writers; the watch delivers every commit
// once, in revision order, and applying them gives the store's contents.
func testFeedConcurrent(t *testing.T, f store.Feed, o FeedOptions) {
	rev0 := currentRev(t, f)
	w := watch(t, f, rev0)
	const writers, each = 4, 15
	Concurrently(t, writers, each, func(i, j int) (bool, error) {
		return true, f.Update(func(tx store.Tx) error {
			if j%3 == 2 {
				return tx.Delete(store.Nodes, fmt.Sprintf("w%d-%d", i, j-1))
			}
			if err := tx.PutRaw(store.Nodes, fmt.Sprintf("w%d-%d", i, j), []byte(fmt.Sprint(j))); err != nil {
				return err
			}
			return tx.PutRaw(store.Nodes, "shared", []byte(fmt.Sprintf("w%d-%d", i, j)))
		})
	})
	want := map[string]string{}
	rev, err := f.ViewRev(func(tx store.Tx) error {
		return tx.ForEach(store.Nodes, func(k string, v []byte) error { want[k] = string(v); return nil })
	})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	last, n := rev0, 0
	for last < rev {
		c := w.next(t)
		if c.Rev <= last {
			t.Fatalf("commit %d at revision %d after %d", n, c.Rev, last)
		}
		last = c.Rev
		n++
		for _, ch := range c.Changes {
			if ch.Deleted {
				delete(got, ch.Key)
			} else {
				got[ch.Key] = string(ch.Value)
			}
		}
	}
	if o.GroupCommit && (n < 1 || n > writers*each) {
		t.Errorf("%d commits delivered, want 1 to %d", n, writers*each)
	} else if !o.GroupCommit && n != writers*each {
		t.Errorf("%d commits delivered, want %d", n, writers*each)
	}
	if !maps.Equal(got, want) {
		t.Fatalf("applying the watched commits gives %v, the store holds %v", got, want)
	}
}

// testFeedCompacted: a watch from compacted history fails with a
// *CompactedError, and a new read and watch resume.
func testFeedCompacted(t *testing.T, f store.Feed, o FeedOptions) {
	if o.Compact == nil {
		t.Skip("no compaction for this store")
	}
	rev0 := currentRev(t, f)
	for i := range 3 {
		mustUpdate(t, f, func(tx store.Tx) error { return tx.PutRaw(store.Roles, fmt.Sprint(i), []byte("v")) })
	}
	o.Compact(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := f.Watch(ctx, rev0, func(c store.Commit) error { return fmt.Errorf("delivered %s from compacted history", describe(c)) })
	var ce *store.CompactedError
	if !errors.As(err, &ce) {
		t.Fatalf("Watch from compacted revision %d = %v, want a *store.CompactedError", rev0, err)
	}
	if !strings.Contains(err.Error(), "read the whole store again") {
		t.Errorf("error %q does not say how to recover", err)
	}
	var keys []string
	rev, err := f.ViewRev(func(tx store.Tx) error {
		return tx.ForEach(store.Roles, func(k string, _ []byte) error { keys = append(keys, k); return nil })
	})
	if err != nil || !slices.Equal(keys, []string{"0", "1", "2"}) {
		t.Fatalf("ViewRev after compaction: %v, %v", keys, err)
	}
	w := watch(t, f, rev)
	w.none(t, f)
}

func testSupersededOwn(t *testing.T, f store.Feed, _ FeedOptions) {
	rev0 := currentRev(t, f)
	w := watch(t, f, rev0)
	for _, v := range []string{"1", "2"} {
		mustUpdate(t, f, func(tx store.Tx) error { return tx.PutRaw(store.Roles, "k", []byte(v)) })
	}
	c1, c2 := w.next(t), w.next(t)
	if !f.Superseded(c1.Rev, store.Roles, "k") || !f.Superseded(c2.Rev, store.Roles, "k") {
		t.Fatal("Superseded is false for the store's own commits")
	}
	if !f.Shared() {
		return // one writer: every commit is its own
	}
	if f.Superseded(c2.Rev, store.Roles, "k") {
		t.Error("Superseded still true after the watch reached the own commit")
	}
	if f.Superseded(c2.Rev, store.Roles, "other") {
		t.Error("Superseded true for a key this handle never wrote")
	}
}

// testSupersededReplicas: two handles on one store; each skips its own
// commits and the other's commits it has already overwritten.
func testSupersededReplicas(t *testing.T, a store.Feed, o FeedOptions) {
	if o.Replica == nil {
		t.Skip("one writer only")
	}
	b := o.Replica(t, a)
	if !a.Shared() || !b.Shared() {
		t.Fatal("Shared is false on a store with two handles")
	}
	rev0 := currentRev(t, a)
	wa, wb := watch(t, a, rev0), watch(t, b, rev0)
	mustUpdate(t, a, func(tx store.Tx) error { return tx.PutRaw(store.Roles, "k", []byte("a")) })
	mustUpdate(t, b, func(tx store.Tx) error { return tx.PutRaw(store.Roles, "k", []byte("b")) })
	mustUpdate(t, b, func(tx store.Tx) error { return tx.PutRaw(store.Users, "u", []byte("b")) })
	type step struct {
		h    store.Feed
		w    *watcher
		want []bool // Superseded for each of the three commits
	}
	for name, s := range map[string]step{"a": {a, wa, []bool{true, false, false}}, "b": {b, wb, []bool{true, true, true}}} {
		for i, want := range s.want {
			c := s.w.next(t)
			ch := c.Changes[0]
			if got := s.h.Superseded(c.Rev, ch.Bucket, ch.Key); got != want {
				t.Errorf("handle %s, commit %d (%s): Superseded = %v, want %v", name, i, describe(c), got, want)
			}
		}
	}
}
