package store_test

import (
	"testing"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/coordinator/store/storetest"
)

func TestBoltConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return storetest.OpenBolt(t) })
}

func TestBoltFeed(t *testing.T) {
	storetest.RunFeed(t, func(t *testing.T) store.Feed { return storetest.OpenBolt(t) }, storetest.FeedOptions{Compact: func(t *testing.T, f store.Feed) {
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

func TestMemScan(t *testing.T) { storetest.Scan(t, store.NewMem()) }
