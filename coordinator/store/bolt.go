package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bolt is a Store in one bbolt file.
type Bolt struct {
	db *bolt.DB
}

var _ Store = (*Bolt)(nil)

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
	return &Bolt{db: db}, nil
}

// View implements Store.
func (s *Bolt) View(fn func(Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

// Update implements Store.
func (s *Bolt) Update(fn func(Tx) error) error {
	return s.db.Update(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

// Backup implements Store: a consistent online snapshot, written to a
// temporary file and renamed into place, mode 0600.
func (s *Bolt) Backup(path string) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		_, err := tx.WriteTo(f)
		return err
	})
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

// Close implements Store.
func (s *Bolt) Close() error { return s.db.Close() }

type boltTx struct{ tx *bolt.Tx }

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
	return bk.Put([]byte(key), value)
}

func (t boltTx) Delete(b Bucket, key string) error {
	bk, err := t.bucket(b)
	if err != nil {
		return err
	}
	return bk.Delete([]byte(key))
}

func (t boltTx) ForEach(b Bucket, fn func(string, []byte) error) error {
	bk, err := t.bucket(b)
	if err != nil {
		return err
	}
	return bk.ForEach(func(k, v []byte) error { return fn(string(k), v) })
}

func (t boltTx) NextSequence(b Bucket) (uint64, error) {
	bk, err := t.bucket(b)
	if err != nil {
		return 0, err
	}
	return bk.NextSequence()
}
