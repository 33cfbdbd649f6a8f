package store_test

import (
	"path/filepath"
	"testing"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/coordinator/store/storetest"
)

func TestBoltConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		t.Helper()
		s, err := store.OpenBolt(filepath.Join(t.TempDir(), "coordinator.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestBoltFeed(t *testing.T) {
	storetest.RunFeed(t, func(t *testing.T) store.Feed {
		t.Helper()
		s, err := store.OpenBolt(filepath.Join(t.TempDir(), "coordinator.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}, storetest.FeedOptions{Compact: func(t *testing.T, f store.Feed) {
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
