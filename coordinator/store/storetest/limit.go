package storetest

import (
	"fmt"

	"github.com/clustral/clustral/coordinator/store"
)

// Limit returns st refusing every commit that writes more than max keys,
// counted as etcd counts them (each key written or deleted, a version
// key per bucket written, one sequence counter), as etcd refuses a
// commit over its --max-txn-ops; store.MaxWrites of it is max. Code that
// must fit etcd's commits is tested on it without an etcd.
func Limit(st store.Store, max int) store.Store { return &limited{Store: st, max: max} }

type limited struct {
	store.Store
	max int
}

func (l *limited) MaxWrites() int { return l.max }

func (l *limited) Update(fn func(store.Tx) error) error {
	return l.Store.Update(func(tx store.Tx) error {
		c := &countingTx{Tx: tx, keys: map[string]bool{}, buckets: map[store.Bucket]bool{}}
		if err := fn(c); err != nil {
			return err
		}
		if n := len(c.keys) + len(c.buckets) + c.seqs; n > l.max {
			return fmt.Errorf("a commit of %d keys, over the store's %d", n, l.max)
		}
		return nil
	})
}

// countingTx counts the keys a transaction writes.
type countingTx struct {
	store.Tx
	keys    map[string]bool
	buckets map[store.Bucket]bool
	seqs    int
}

func (c *countingTx) PutRaw(b store.Bucket, k string, v []byte) error {
	c.keys[string(b)+"/"+k], c.buckets[b] = true, true
	return c.Tx.PutRaw(b, k, v)
}

func (c *countingTx) Delete(b store.Bucket, k string) error {
	c.keys[string(b)+"/"+k], c.buckets[b] = true, true
	return c.Tx.Delete(b, k)
}

func (c *countingTx) NextSequence(b store.Bucket) (uint64, error) {
	c.seqs = 1 // one counter key, however often it moves
	return c.Tx.NextSequence(b)
}
