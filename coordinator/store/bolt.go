package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bolt is a Store in one bbolt file. It is a Feed of its own commits
// (one process holds the file, so there are no others): their revision
// is bbolt's transaction id. It keeps commits for Watch (the latest
// boltHistory, within historyBytes) only from the first ViewRev or Watch
// on, so a coordinator that never follows its store (bbolt is not
// Shared) pays nothing for it.
type Bolt struct {
	db *bolt.DB
	// wmu is held by the caller committing the queue (Update); it orders
	// the publishing of commits as bbolt ordered the commits.
	wmu       sync.Mutex
	hist      *history
	recording bool // under wmu: commits go to hist
	// queue holds the Update calls waiting for the next commit, and
	// leading says one of them commits it; both under qmu (never held
	// with wmu's commit under way).
	qmu     sync.Mutex
	queue   []*boltCall
	leading bool
}

// boltCall is one Update waiting to be committed: its function, and
// where its outcome is sent once the commit that holds it is durable,
// or errLead if it is to commit the queue itself.
type boltCall struct {
	fn   func(Tx) error
	done chan error // buffered: the committer never waits on it
}

// errLead, sent on a queued call's done, makes that call commit the
// queue (see Update). It never leaves the package.
var errLead = errors.New("store: commit the queue")

var _ Feed = (*Bolt)(nil)

// boltHistory is how many commits a Bolt keeps for Watch.
const boltHistory = 4096

// OpenBolt opens (or creates) the bbolt store at path, creating its
// directory with mode 0700 and the file with mode 0600. It fails fast if
// another process holds the file.
func OpenBolt(path string) (*Bolt, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create store directory: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: another coordinator holds it; stop it or use another --data-dir", path)
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range AllBuckets {
			if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
				return fmt.Errorf("create bucket %s: %w", b, err)
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &Bolt{db: db, hist: newHistory(boltHistory)}, nil
}

// View implements Store.
func (s *Bolt) View(fn func(Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx: tx}) })
}

// record starts keeping commits for Watch, if it has not: what came
// before is not kept.
func (s *Bolt) record() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.recording {
		return nil
	}
	return s.db.View(func(tx *bolt.Tx) error {
		s.hist.forget(int64(tx.ID()))
		s.recording = true
		return nil
	})
}

// ViewRev implements Feed: the revision is the id of the newest commit.
func (s *Bolt) ViewRev(fn func(Tx) error) (int64, error) {
	if err := s.record(); err != nil {
		return 0, err
	}
	var rev int64
	err := s.db.View(func(tx *bolt.Tx) error {
		rev = int64(tx.ID())
		return fn(boltTx{tx: tx})
	})
	return rev, err
}

// Update implements Store with group commit: concurrent calls share one
// bbolt transaction and so one disk sync. Each call joins the queue; one
// call at a time, the leader, commits everything queued by then, in the
// order it was queued, and every call returns once the transaction that
// held it is durable (or failed). A commit under way thus gathers the
// calls that arrive meanwhile into the next one, and a call alone is
// committed alone, as before. The leader commits once, the batch that
// holds its own call, and then hands the lead to the oldest call still
// queued, if any: no call waits for more than the commit under way and
// its own, and a call whose commit is done returns at once (it does not
// queue for a lock behind the calls of later commits).
//
// A call whose fn fails gets its error and is dropped, and the others are
// run again in a fresh transaction (Store.Update lets fn run more than
// once). The outcome is still serializable: the failed call ran after
// those queued before it, and wrote nothing.
func (s *Bolt) Update(fn func(Tx) error) error {
	c := &boltCall{fn: fn, done: make(chan error, 1)}
	s.qmu.Lock()
	s.queue = append(s.queue, c)
	lead := !s.leading
	s.leading = true
	s.qmu.Unlock()
	if !lead {
		if err := <-c.done; err != errLead {
			return err
		}
	}
	// c leads, and is queued: no one else takes the queue meanwhile.
	defer s.handOff() // also when an fn panics
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.qmu.Lock()
	batch := s.queue
	s.queue = nil
	s.qmu.Unlock()
	s.commitLocked(batch)
	return <-c.done
}

// handOff gives the lead to the oldest queued call, or ends it if none
// is queued (the next Update takes it).
func (s *Bolt) handOff() {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if len(s.queue) == 0 {
		s.leading = false
		return
	}
	s.queue[0].done <- errLead // its done is empty: it is waiting
}

// errTxPanicked is what the other calls of a transaction in which one fn
// panicked return; the panic goes on in the committing goroutine.
var errTxPanicked = errors.New("store: another write in the same transaction panicked; nothing was written")

// commitLocked commits batch in one transaction, dropping the calls that
// fail (see Update), and sends each call its outcome. Called with wmu
// held.
func (s *Bolt) commitLocked(batch []*boltCall) {
	defer func() {
		if p := recover(); p != nil {
			for _, c := range batch {
				c.done <- errTxPanicked
			}
			panic(p)
		}
	}()
	for len(batch) > 0 {
		var c Commit
		var changes changeSet // nil, recording nothing, until record
		if s.recording {
			changes = changeSet{}
		}
		failed, ferr := -1, error(nil)
		err := s.db.Update(func(tx *bolt.Tx) error {
			c.Rev = int64(tx.ID())
			for i, call := range batch {
				if err := call.fn(boltTx{tx: tx, changes: changes}); err != nil {
					failed, ferr = i, err
					return err
				}
			}
			return nil
		})
		if failed >= 0 {
			batch[failed].done <- ferr
			batch = slices.Delete(batch, failed, failed+1)
			continue
		}
		if err == nil && len(changes) > 0 {
			c.Changes = changes.sorted()
			s.hist.publish(c)
		}
		for _, call := range batch {
			call.done <- err
		}
		return
	}
}

// Shared implements Feed: a bbolt file has one writer.
func (s *Bolt) Shared() bool { return false }

// Watch implements Feed, from the commits this Bolt keeps.
func (s *Bolt) Watch(ctx context.Context, after int64, fn func(Commit) error) error {
	if err := s.record(); err != nil {
		return err
	}
	return s.hist.watch(ctx, after, fn)
}

// Superseded implements Feed: every commit of a Bolt is its own.
func (s *Bolt) Superseded(int64, Bucket, string) bool { return true }

// Backup implements Store: a consistent online snapshot, written to a
// temporary file and renamed into place, mode 0600.
func (s *Bolt) Backup(path string) error { return backupFile(path, s.BackupTo) }

// backupFile writes a snapshot through to into a temporary file beside
// path, syncs it and renames it into place, mode 0600.
func backupFile(path string, to func(io.Writer) (int64, error)) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	_, err = to(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("backup to %s: %w", path, err)
	}
	return nil
}

// BackupTo implements Store.
func (s *Bolt) BackupTo(w io.Writer) (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}

// BackupFile writes a consistent snapshot of the bbolt store at path to w
// without a running coordinator: it opens the file read-only, which
// fails (after timeout) while a coordinator holds it.
func BackupFile(path string, w io.Writer, timeout time.Duration) (int64, error) {
	if _, err := os.Stat(path); err != nil {
		return 0, fmt.Errorf("open store: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: timeout})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return 0, fmt.Errorf("open store %s: a coordinator holds it; back up through the running coordinator instead", path)
		}
		return 0, fmt.Errorf("open store %s: %w", path, err)
	}
	defer db.Close()
	var n int64
	err = db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("snapshot %s: %w", path, err)
	}
	return n, nil
}

// Verify opens the bbolt file at path read-only and checks that it is a
// consistent clustral store: every bucket is present and bbolt's
// consistency check passes. It returns the number of keys per bucket.
func Verify(path string) (map[Bucket]int, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer db.Close()
	counts := make(map[Bucket]int, len(AllBuckets))
	err = db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() { // drain: the checker blocks on sends
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			return fmt.Errorf("consistency check: %w", errors.Join(errs...))
		}
		for _, b := range AllBuckets {
			bk := tx.Bucket([]byte(b))
			if bk == nil && slices.Contains(addedBuckets, b) {
				continue // written before the bucket existed: empty
			}
			if bk == nil {
				return fmt.Errorf("bucket %s is missing", b)
			}
			counts[b] = bk.Stats().KeyN
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", path, err)
	}
	return counts, nil
}

// Close implements Store.
func (s *Bolt) Close() error { return s.db.Close() }

type boltTx struct {
	tx      *bolt.Tx
	changes changeSet // nil in View
}

func (t boltTx) bucket(b Bucket) (*bolt.Bucket, error) {
	bk := t.tx.Bucket([]byte(b))
	if bk == nil {
		return nil, fmt.Errorf("unknown bucket %q", b)
	}
	return bk, nil
}

func (t boltTx) GetRaw(b Bucket, key string) ([]byte, error) {
	bk, err := t.bucket(b)
	if err != nil {
		return nil, err
	}
	v := bk.Get([]byte(key))
	if v == nil {
		return nil, fmt.Errorf("%s/%s: %w", b, key, ErrNotFound)
	}
	return append([]byte(nil), v...), nil
}

func (t boltTx) PutRaw(b Bucket, key string, value []byte) error {
	bk, err := t.bucket(b)
	if err != nil {
		return err
	}
	if err := bk.Put([]byte(key), value); err != nil {
		return err
	}
	t.changes.put(b, key, value)
	return nil
}

func (t boltTx) Delete(b Bucket, key string) error {
	bk, err := t.bucket(b)
	if err != nil {
		return err
	}
	if t.changes != nil {
		if k, _ := bk.Cursor().Seek([]byte(key)); string(k) != key {
			return nil // deleting an absent key changes nothing
		}
	}
	if err := bk.Delete([]byte(key)); err != nil {
		return err
	}
	t.changes.del(b, key)
	return nil
}

func (t boltTx) ForEach(b Bucket, fn func(string, []byte) error) error {
	bk, err := t.bucket(b)
	if err != nil {
		return err
	}
	return bk.ForEach(func(k, v []byte) error { return fn(string(k), v) })
}

func (t boltTx) Scan(b Bucket, from, to string, reverse bool, fn func(string, []byte) error) error {
	bk, err := t.bucket(b)
	if err != nil {
		return err
	}
	c := bk.Cursor()
	if !reverse {
		for k, v := c.Seek([]byte(from)); k != nil && inRange(string(k), from, to); k, v = c.Next() {
			if err := fn(string(k), v); err != nil {
				return scanned(err)
			}
		}
		return nil
	}
	var k, v []byte
	if to == "" {
		k, v = c.Last()
	} else if k, _ = c.Seek([]byte(to)); k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	for ; k != nil && string(k) >= from; k, v = c.Prev() {
		if err := fn(string(k), v); err != nil {
			return scanned(err)
		}
	}
	return nil
}

func (t boltTx) NextSequence(b Bucket) (uint64, error) {
	bk, err := t.bucket(b)
	if err != nil {
		return 0, err
	}
	return bk.NextSequence()
}
