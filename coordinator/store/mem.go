package store

import (
	"context"
	"errors"
	"io"
	"maps"
	"slices"
	"sync"
)

// Mem is a Store in memory, for tests and fuzzing that want no file per
// case. Update keeps what fn wrote only if fn returns nil; nothing is
// durable, and Backup and BackupTo are not supported. It is safe for
// concurrent use: transactions run one at a time.
//
// Mem is a Feed. Replica returns another handle on the same data, as a
// second coordinator replica sharing one etcd has: each handle has its own
// Superseded, and both report Shared.
type Mem struct {
	core *memCore
	own  *ownCommits
}

// memCore is the data the handles of one Mem share.
type memCore struct {
	mu     sync.Mutex
	b      map[Bucket]map[string][]byte
	n      map[Bucket]uint64
	rev    int64
	shared bool
	hist   *history
	// leads holds, per leadership name, a token the leader takes.
	leads map[string]chan struct{}
	// pres is the presence register (presence.go), made on first use.
	pres *memPresence
}

// memHistory is how many commits a Mem keeps for Watch.
const memHistory = 1 << 14

// NewMem returns an empty Mem.
func NewMem() *Mem {
	return &Mem{
		core: &memCore{b: map[Bucket]map[string][]byte{}, n: map[Bucket]uint64{}, hist: newHistory(memHistory), leads: map[string]chan struct{}{}},
		own:  &ownCommits{},
	}
}

// Replica returns another handle on s's data, with its own Superseded;
// from then on both report Shared.
func (s *Mem) Replica() *Mem {
	s.core.mu.Lock()
	defer s.core.mu.Unlock()
	s.core.shared = true
	return &Mem{core: s.core, own: &ownCommits{}}
}

type memTx struct {
	s       *memCore
	ro      bool
	changes changeSet
	seq     bool // a NextSequence was taken
}

// View runs fn in a read-only transaction.
func (s *Mem) View(fn func(Tx) error) error {
	_, err := s.ViewRev(fn)
	return err
}

// ViewRev implements Feed.
func (s *Mem) ViewRev(fn func(Tx) error) (int64, error) {
	s.core.mu.Lock()
	defer s.core.mu.Unlock()
	return s.core.rev, fn(&memTx{s: s.core, ro: true})
}

// Update runs fn in a read-write transaction; if fn returns an error, the
// data is put back as it was.
func (s *Mem) Update(fn func(Tx) error) error {
	c := s.core
	c.mu.Lock()
	defer c.mu.Unlock()
	old, oldN := map[Bucket]map[string][]byte{}, maps.Clone(c.n)
	for k, v := range c.b {
		old[k] = maps.Clone(v)
	}
	tx := &memTx{s: c, changes: changeSet{}}
	if err := fn(tx); err != nil {
		c.b, c.n = old, oldN
		return err
	}
	if len(tx.changes) == 0 && !tx.seq {
		return nil
	}
	c.rev++
	commit := Commit{Rev: c.rev, Changes: tx.changes.sorted()}
	s.own.record(c.rev, commit.Changes)
	if len(commit.Changes) > 0 {
		c.hist.publish(commit)
	}
	return nil
}

// Shared implements Feed.
func (s *Mem) Shared() bool {
	s.core.mu.Lock()
	defer s.core.mu.Unlock()
	return s.core.shared
}

// Watch implements Feed.
func (s *Mem) Watch(ctx context.Context, after int64, fn func(Commit) error) error {
	return s.core.hist.watch(ctx, after, fn)
}

// Superseded implements Feed.
func (s *Mem) Superseded(rev int64, b Bucket, key string) bool {
	return s.own.superseded(rev, b, key)
}

// Lead implements Elector: of the handles of one Mem, one at a time
// leads each name, until its ctx ends.
func (s *Mem) Lead(ctx context.Context, name, id string, fn func(context.Context)) error {
	s.core.mu.Lock()
	token := s.core.leads[name]
	if token == nil {
		token = make(chan struct{}, 1)
		s.core.leads[name] = token
	}
	s.core.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case token <- struct{}{}:
		}
		fn(ctx)
		<-token
	}
}

// Backup is not supported.
func (*Mem) Backup(string) error { return errors.New("not supported") }

// Close does nothing.
func (*Mem) Close() error { return nil }

// BackupTo is not supported.
func (*Mem) BackupTo(io.Writer) (int64, error) { return 0, errors.New("not supported") }

func (t *memTx) GetRaw(b Bucket, key string) ([]byte, error) {
	v, ok := t.s.b[b][key]
	if !ok {
		return nil, ErrNotFound
	}
	return slices.Clone(v), nil
}

func (t *memTx) PutRaw(b Bucket, key string, value []byte) error {
	if t.ro {
		return errors.New("read-only transaction")
	}
	if t.s.b[b] == nil {
		t.s.b[b] = map[string][]byte{}
	}
	t.s.b[b][key] = slices.Clone(value)
	t.changes.put(b, key, value)
	return nil
}

func (t *memTx) Delete(b Bucket, key string) error {
	if t.ro {
		return errors.New("read-only transaction")
	}
	if _, ok := t.s.b[b][key]; !ok {
		return nil // deleting an absent key changes nothing
	}
	delete(t.s.b[b], key)
	t.changes.del(b, key)
	return nil
}

func (t *memTx) ForEach(b Bucket, fn func(string, []byte) error) error {
	for _, k := range slices.Sorted(maps.Keys(t.s.b[b])) {
		if err := fn(k, t.s.b[b][k]); err != nil {
			return err
		}
	}
	return nil
}

func (t *memTx) Scan(b Bucket, from, to string, reverse bool, fn func(string, []byte) error) error {
	keys := slices.Sorted(maps.Keys(t.s.b[b]))
	if reverse {
		slices.Reverse(keys)
	}
	for _, k := range keys {
		if !inRange(k, from, to) {
			continue
		}
		if err := fn(k, t.s.b[b][k]); err != nil {
			return scanned(err)
		}
	}
	return nil
}

func (t *memTx) NextSequence(b Bucket) (uint64, error) {
	if t.ro {
		return 0, errors.New("read-only transaction")
	}
	t.s.n[b]++
	t.seq = true
	return t.s.n[b], nil
}

var (
	_ Feed    = (*Mem)(nil)
	_ Elector = (*Mem)(nil)
)
