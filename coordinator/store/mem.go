package store

import (
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
type Mem struct {
	mu sync.Mutex
	b  map[Bucket]map[string][]byte
	n  map[Bucket]uint64
}

// NewMem returns an empty Mem.
func NewMem() *Mem {
	return &Mem{b: map[Bucket]map[string][]byte{}, n: map[Bucket]uint64{}}
}

type memTx struct {
	s  *Mem
	ro bool
}

// View runs fn in a read-only transaction.
func (s *Mem) View(fn func(Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fn(memTx{s, true})
}

// Update runs fn in a read-write transaction; if fn returns an error, the
// data is put back as it was.
func (s *Mem) Update(fn func(Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, oldN := map[Bucket]map[string][]byte{}, maps.Clone(s.n)
	for k, v := range s.b {
		old[k] = maps.Clone(v)
	}
	if err := fn(memTx{s, false}); err != nil {
		s.b, s.n = old, oldN
		return err
	}
	return nil
}

// Backup is not supported.
func (*Mem) Backup(string) error { return errors.New("not supported") }

// Close does nothing.
func (*Mem) Close() error { return nil }

// BackupTo is not supported.
func (*Mem) BackupTo(io.Writer) (int64, error) { return 0, errors.New("not supported") }

func (t memTx) GetRaw(b Bucket, key string) ([]byte, error) {
	v, ok := t.s.b[b][key]
	if !ok {
		return nil, ErrNotFound
	}
	return slices.Clone(v), nil
}

func (t memTx) PutRaw(b Bucket, key string, value []byte) error {
	if t.ro {
		return errors.New("read-only transaction")
	}
	if t.s.b[b] == nil {
		t.s.b[b] = map[string][]byte{}
	}
	t.s.b[b][key] = slices.Clone(value)
	return nil
}

func (t memTx) Delete(b Bucket, key string) error {
	if t.ro {
		return errors.New("read-only transaction")
	}
	delete(t.s.b[b], key)
	return nil
}

func (t memTx) ForEach(b Bucket, fn func(string, []byte) error) error {
	for _, k := range slices.Sorted(maps.Keys(t.s.b[b])) {
		if err := fn(k, t.s.b[b][k]); err != nil {
			return err
		}
	}
	return nil
}

func (t memTx) NextSequence(b Bucket) (uint64, error) {
	t.s.n[b]++
	return t.s.n[b], nil
}

var _ Store = (*Mem)(nil)
