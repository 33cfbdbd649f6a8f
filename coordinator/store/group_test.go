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
