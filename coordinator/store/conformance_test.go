package store_test

import (
	"context"
	"testing"
	"time"

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
	}, GroupCommit: true})
}

func TestMemFeed(t *testing.T) {
	storetest.RunFeed(t, func(t *testing.T) store.Feed { return store.NewMem() },
		storetest.FeedOptions{Replica: func(t *testing.T, f store.Feed) store.Feed { return f.(*store.Mem).Replica() }})
}

func TestMemPresence(t *testing.T) {
	storetest.RunPresence(t, func(t *testing.T) store.Presence { return store.NewMem() }, storetest.PresenceOptions{
		Replica: func(t *testing.T, p store.Presence) store.Presence { return p.(*store.Mem).Replica() },
		// A Mem handle has no process to die: its announcements end.
		Crash: func(t *testing.T, p store.Presence, replica, key, value string) func() {
			ctx, cancel := context.WithCancel(t.Context())
			p.(*store.Mem).Replica().Announce(ctx, replica).Set(key, value)
			return cancel
		},
		Expiry: time.Second,
	})
}

func TestMemScan(t *testing.T) { storetest.Scan(t, store.NewMem()) }
