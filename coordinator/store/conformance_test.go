package store_test

import (
	"path/filepath"
	"testing"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/coordinator/store/storetest"
)

// openBolt opens a new bbolt store for t, closed when t ends.
func openBolt(t *testing.T) *store.Bolt {
	t.Helper()
	s, err := store.OpenBolt(filepath.Join(t.TempDir(), "coordinator.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestBoltConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openBolt(t) })
}

func TestBoltFeed(t *testing.T) {
	storetest.RunFeed(t, func(t *testing.T) store.Feed { return openBolt(t) }, storetest.FeedOptions{Compact: func(t *testing.T, f store.Feed) {
		store.SetHistory(f.(*store.Bolt), 1)
		if err := f.Update(func(tx store.Tx) error { return tx.PutRaw(store.Meta, "compact", nil) }); err != nil {
			t.Fatal(err)
		}
	}})
}

func TestMemFeed(t *testing.T) {
	storetest.RunFeed(t, func(t *testing.T) store.Feed { return store.NewMem() },
		storetest.FeedOptions{Replica: func(t *testing.T, f store.Feed) store.Feed { return f.(*store.Mem).Replica() }})
}
