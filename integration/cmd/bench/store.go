package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/integration/harness"
)

// storeBenchFor is how long each store_write_per_s measurement writes.
const storeBenchFor = 3 * time.Second

// benchStore measures store_write_per_s: acknowledged Updates a second,
// each writing one node-sized record under its own key, with one writer
// and with 16, on bbolt (a file in a temporary directory, fsync on every
// commit) and on a three-member etcd cluster on loopback (which the
// harness runs without fsync, so the etcd numbers are an upper bound of
// what disks allow). The names end in the backend and the writer count,
// e.g. store_write_per_s_etcd3_16.
func benchStore(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "clustral-bench-store-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bolt, err := store.OpenBolt(filepath.Join(dir, "coordinator.db"))
	if err != nil {
		return err
	}
	defer bolt.Close()
	ec, err := harness.StartEtcdCluster(ctx, dir, 3)
	if err != nil {
		return err
	}
	defer ec.Close()
	etcd, err := store.OpenEtcd(ctx, store.EtcdConfig{Endpoints: ec.URLs})
	if err != nil {
		return err
	}
	defer etcd.Close()
	value := []byte(strings.Repeat("x", 400))
	for _, b := range []struct {
		name string
		st   store.Store
	}{{"bolt", bolt}, {"etcd3", etcd}} {
		for _, writers := range []int{1, 16} {
			n, err := writeFor(ctx, b.st, writers, value)
			if err != nil {
				return fmt.Errorf("store bench on %s: %w", b.name, err)
			}
			report(fmt.Sprintf("store_write_per_s_%s_%d", b.name, writers), float64(n)/storeBenchFor.Seconds(), "writes/s")
		}
	}
	return nil
}

// writeFor runs writers goroutines making Updates on st for
// storeBenchFor and returns how many were acknowledged.
func writeFor(ctx context.Context, st store.Store, writers int, value []byte) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, storeBenchFor)
	defer cancel()
	var (
		n    atomic.Int64
		wg   sync.WaitGroup
		once sync.Once
		ferr error
	)
	for w := range writers {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				err := st.Update(func(tx store.Tx) error { return tx.PutRaw(store.Nodes, fmt.Sprintf("bench-%d-%d", w, i), value) })
				if err != nil {
					if ctx.Err() == nil {
						once.Do(func() { ferr = err })
					}
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	return n.Load(), ferr
}
