package store_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/coordinator/store/storetest"
	"github.com/clustral/clustral/pkg/testkit"
)

// TestBoltGroupCommit: Updates that arrive while a commit is under way
// share the next transaction; one that fails gets its own error and
// writes nothing, and the others are committed all the same, each
// returning only once its write is durable.
func TestBoltGroupCommit(t *testing.T) {
	b := storetest.OpenBolt(t)
	errRefused := errors.New("refused")
	commitsBefore := commits(t, b)
	// The first Update holds the commit until the others have queued.
	hold, held := make(chan struct{}), make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	t.Cleanup(release) // also when the test fails before it releases
	first := make(chan error, 1)
	go func() {
		first <- b.Update(func(tx store.Tx) error {
			close(held)
			<-hold
			return tx.PutRaw(store.Nodes, "first", []byte("1"))
		})
	}()
	testkit.Recv(t, held, "the first commit under way")

	tests := []struct {
		key  string
		fail bool
	}{{"a", false}, {"b", true}, {"c", false}, {"d", true}, {"e", false}}
	errs := make([]error, len(tests))
	var wg sync.WaitGroup
	for i, tc := range tests {
		wg.Go(func() {
			errs[i] = b.Update(func(tx store.Tx) error {
				if err := tx.PutRaw(store.Nodes, tc.key, []byte(tc.key)); err != nil {
					return err
				}
				if tc.fail {
					return fmt.Errorf("%s: %w", tc.key, errRefused)
				}
				return nil
			})
		})
	}
	testkit.WaitFor(t, "every update queued", func() bool { return store.Queued(b) == len(tests) })
	release()
	wg.Wait()
	if err := testkit.Recv(t, first, "the first update"); err != nil {
		t.Fatal(err)
	}
	for i, tc := range tests {
		if tc.fail && !errors.Is(errs[i], errRefused) {
			t.Errorf("update %s: %v, want its own error", tc.key, errs[i])
		}
		if !tc.fail && errs[i] != nil {
			t.Errorf("update %s: %v", tc.key, errs[i])
		}
		_, err := getRaw(b, tc.key)
		if tc.fail && !errors.Is(err, store.ErrNotFound) {
			t.Errorf("failed update %s left its write: %v", tc.key, err)
		}
		if !tc.fail && err != nil {
			t.Errorf("update %s not stored: %v", tc.key, err)
		}
	}
	// The first commit, then the queued ones together: each failure
	// costs a rolled-back transaction, not a commit.
	if got := commits(t, b) - commitsBefore; got != 2 {
		t.Errorf("%d commits for the first update and %d queued ones, want 2", got, len(tests))
	}
}

// TestBoltGroupCommitReturnsAtOnce: a call returns as soon as the
// commit that holds it is durable, even while a later commit is under
// way, and the lead passes to a call queued meanwhile, which commits it
// without another call arriving.
func TestBoltGroupCommitReturnsAtOnce(t *testing.T) {
	b := storetest.OpenBolt(t)
	commitsBefore := commits(t, b)
	// held is a commit held up by one of its fns (holder): in is closed
	// when it runs, and it goes on once released.
	type held struct {
		in      chan struct{}
		release func()
		hold    chan struct{}
	}
	newHeld := func() *held {
		h := &held{in: make(chan struct{}), hold: make(chan struct{})}
		h.release = sync.OnceFunc(func() { close(h.hold) })
		t.Cleanup(h.release)
		return h
	}
	// holder returns an fn that writes key and, the first time it runs,
	// holds its commit up with h.
	holder := func(key string, h *held) func(store.Tx) error {
		first := sync.OnceFunc(func() { close(h.in); <-h.hold })
		return func(tx store.Tx) error {
			first()
			return tx.PutRaw(store.Nodes, key, []byte(key))
		}
	}
	put := func(key string) func(store.Tx) error {
		return func(tx store.Tx) error { return tx.PutRaw(store.Nodes, key, []byte(key)) }
	}
	update := func(fn func(store.Tx) error) <-chan error {
		done := make(chan error, 1)
		go func() { done <- b.Update(fn) }()
		return done
	}

	// Commit 1 (l) is held while a and b queue; commit 2 (a, b) is held
	// in b's fn while c queues; commit 3 (c) is held in c's fn.
	h1, h2, h3 := newHeld(), newHeld(), newHeld()
	l := update(holder("l", h1))
	testkit.Recv(t, h1.in, "commit 1 under way")
	a := update(put("a"))
	testkit.WaitFor(t, "a queued", func() bool { return store.Queued(b) == 1 })
	bb := update(holder("b", h2))
	testkit.WaitFor(t, "b queued", func() bool { return store.Queued(b) == 2 })
	h1.release()
	testkit.Recv(t, h2.in, "commit 2 under way")
	c := update(holder("c", h3))
	testkit.WaitFor(t, "c queued", func() bool { return store.Queued(b) == 1 })
	h2.release()
	testkit.Recv(t, h3.in, "commit 3 under way, led by c")
	for _, tc := range []struct {
		name string
		done <-chan error
	}{{"l", l}, {"a", a}, {"b", bb}} {
		if err := testkit.Recv(t, tc.done, tc.name+" returning while commit 3 is under way"); err != nil {
			t.Errorf("update %s: %v", tc.name, err)
		}
	}
	h3.release()
	if err := testkit.Recv(t, c, "c"); err != nil {
		t.Errorf("update c: %v", err)
	}
	if got := commits(t, b) - commitsBefore; got != 3 {
		t.Errorf("%d commits, want 3", got)
	}
	for _, k := range []string{"l", "a", "b", "c"} {
		if _, err := getRaw(b, k); err != nil {
			t.Errorf("update %s not stored: %v", k, err)
		}
	}
}

func getRaw(b *store.Bolt, key string) ([]byte, error) {
	var v []byte
	err := b.View(func(tx store.Tx) error {
		var err error
		v, err = tx.GetRaw(store.Nodes, key)
		return err
	})
	return v, err
}

// commits returns the revision of b's newest commit.
func commits(t *testing.T, b *store.Bolt) int64 {
	t.Helper()
	rev, err := b.ViewRev(func(store.Tx) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// BenchmarkBoltUpdateParallel measures acknowledged writes a second with
// concurrent writers, the load group commit serves: each write is one
// small record and returns once durable.
func BenchmarkBoltUpdateParallel(b *testing.B) {
	for _, writers := range []int{1, 16} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			s := storetest.OpenBolt(b)
			b.SetParallelism(writers)
			var seq sync.Mutex
			n := 0
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					seq.Lock()
					n++
					k := fmt.Sprint(n)
					seq.Unlock()
					if err := s.Update(func(tx store.Tx) error { return tx.PutRaw(store.Nodes, k, []byte(k)) }); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
		})
	}
}
