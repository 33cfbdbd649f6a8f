package recordings

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// ChunkSize is the size of the chunks Shared keeps a recording in: one
// store write each, well below etcd's request limit (1.5 MiB).
const ChunkSize = 512 << 10

// deleteBatch bounds the chunks one transaction of Delete removes, below
// etcd's default limit of operations in a transaction (128).
const deleteBatch = 100

// Shared is a Store in the coordinator's own store, for replicas that
// share it (etcd): a recording any replica stored, every replica reads.
// A recording is kept in chunks of ChunkSize under
// store.RecordingChunks, and what is stored of it, with its number of
// chunks, under store.Recordings, written last: a recording is stored
// once that entry is. Live parts are in the store too (see Append), so
// that a running session is watched on any replica.
type Shared struct {
	st  store.Store
	now func() time.Time
}

// sharedEntry is what store.Recordings holds of a recording.
type sharedEntry struct {
	proto.RecordingInfo
	Chunks int `json:"chunks"`
}

// NewShared returns the Store in st. now stamps stored recordings and
// live parts; nil means time.Now.
func NewShared(st store.Store, now func() time.Time) *Shared {
	if now == nil {
		now = time.Now
	}
	return &Shared{st: st, now: now}
}

func chunkKey(id string, i int) string { return id + "/" + strconv.Itoa(i) }

// entry returns what is stored of id, or ErrNotFound.
func (s *Shared) entry(id string) (sharedEntry, error) {
	var e sharedEntry
	err := s.st.View(func(tx store.Tx) error { return store.Get(tx, store.Recordings, id, &e) })
	if errors.Is(err, store.ErrNotFound) {
		return e, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return e, err
}

// Put implements Store. The chunks go first, one transaction each, then
// the entry that makes them a recording; a Put that fails half way
// leaves chunks that the next Put of id writes over.
func (s *Shared) Put(id string, r io.Reader) (proto.RecordingInfo, error) {
	if err := proto.CheckRecordingID(id); err != nil {
		return proto.RecordingInfo{}, err
	}
	old, err := s.entry(id)
	stored := err == nil
	if err != nil && !errors.Is(err, ErrNotFound) {
		return proto.RecordingInfo{}, fmt.Errorf("store recording %s: %w", id, err)
	}
	h := sha256.New()
	var (
		n      int64
		chunks int
		hdr    proto.RecordingHeader
		buf    = make([]byte, ChunkSize)
	)
	for {
		k, rerr := io.ReadFull(r, buf)
		if k > 0 {
			b := buf[:k]
			h.Write(b)
			n += int64(k)
			if chunks == 0 {
				if hdr, err = readHeader(bytes.NewReader(b)); err != nil {
					return proto.RecordingInfo{}, fmt.Errorf("recording %s: %w", id, err)
				}
				if hdr.Session.ID != id {
					return proto.RecordingInfo{}, fmt.Errorf("recording %s: its header names session %q", id, hdr.Session.ID)
				}
			}
			if !stored { // a resend is only hashed
				if err := s.st.Update(func(tx store.Tx) error { return tx.PutRaw(store.RecordingChunks, chunkKey(id, chunks), b) }); err != nil {
					return proto.RecordingInfo{}, fmt.Errorf("store recording %s: %w", id, err)
				}
			}
			chunks++
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return proto.RecordingInfo{}, fmt.Errorf("store recording %s: %w", id, rerr)
		}
	}
	if chunks == 0 {
		return proto.RecordingInfo{}, fmt.Errorf("recording %s: %w", id, errors.New("recording has no complete header line"))
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if stored {
		if old.SHA256 == sum {
			s.dropLive(id) // if it fails, DropStaleLive takes it later
			return old.RecordingInfo, nil
		}
		return proto.RecordingInfo{}, fmt.Errorf("%w: %s", ErrConflict, id)
	}
	e := sharedEntry{RecordingInfo: proto.RecordingInfo{Session: hdr.Session, Bytes: n, SHA256: sum, Stored: s.now().UTC()}, Chunks: chunks}
	err = s.st.Update(func(tx store.Tx) error {
		var other sharedEntry
		switch err := store.Get(tx, store.Recordings, id, &other); {
		case err == nil && other.SHA256 == sum:
			e = other
			return nil
		case err == nil:
			return fmt.Errorf("%w: %s", ErrConflict, id)
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		return store.Put(tx, store.Recordings, id, e)
	})
	if err != nil {
		return proto.RecordingInfo{}, fmt.Errorf("store recording %s: %w", id, err)
	}
	s.dropLive(id) // if it fails, DropStaleLive takes it later
	return e.RecordingInfo, nil
}

// Open implements Store: the chunks are read one at a time, as the
// caller reads.
func (s *Shared) Open(id string) (io.ReadCloser, error) {
	if err := proto.CheckRecordingID(id); err != nil {
		return nil, err
	}
	e, err := s.entry(id)
	if err != nil {
		return nil, err
	}
	return &chunkReader{s: s, id: id, n: e.Chunks}, nil
}

type chunkReader struct {
	s    *Shared
	id   string
	n, i int // chunks, the next to read
	cur  []byte
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for len(c.cur) == 0 {
		if c.i == c.n {
			return 0, io.EOF
		}
		err := c.s.st.View(func(tx store.Tx) error {
			b, err := tx.GetRaw(store.RecordingChunks, chunkKey(c.id, c.i))
			c.cur = slices.Clone(b)
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("read recording %s chunk %d: %w", c.id, c.i, err)
		}
		c.i++
	}
	n := copy(p, c.cur)
	c.cur = c.cur[n:]
	return n, nil
}

func (c *chunkReader) Close() error { return nil }

// List implements Store.
func (s *Shared) List() ([]proto.RecordingInfo, error) {
	var es []sharedEntry
	err := s.st.View(func(tx store.Tx) error {
		var err error
		es, err = store.List[sharedEntry](tx, store.Recordings)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list recordings: %w", err)
	}
	out := make([]proto.RecordingInfo, len(es))
	for i, e := range es {
		out[i] = e.RecordingInfo
	}
	slices.SortFunc(out, func(a, b proto.RecordingInfo) int { return b.Session.Start.Compare(a.Session.Start) })
	return out, nil
}

// Delete implements Store: the entry goes first, so that a recording is
// never half there, then its chunks, a batch per transaction.
func (s *Shared) Delete(id string) error {
	if err := proto.CheckRecordingID(id); err != nil {
		return err
	}
	var e sharedEntry
	err := s.st.Update(func(tx store.Tx) error {
		if err := store.Get(tx, store.Recordings, id, &e); err != nil {
			return err
		}
		return tx.Delete(store.Recordings, id)
	})
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return fmt.Errorf("delete recording %s: %w", id, err)
	}
	s.dropLive(id) // if it fails, DropStaleLive takes it later
	for from := 0; from < e.Chunks; from += deleteBatch {
		err := s.st.Update(func(tx store.Tx) error {
			for i := from; i < min(from+deleteBatch, e.Chunks); i++ {
				if err := tx.Delete(store.RecordingChunks, chunkKey(id, i)); err != nil && !errors.Is(err, store.ErrNotFound) {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("delete recording %s: %w", id, err)
		}
	}
	return nil
}

// Import moves the recordings of d into s: those a coordinator stored
// in its data directory before it shared its store. Each is removed from
// d once s holds it.
func (s *Shared) Import(d *Dir) (int, error) {
	list, err := d.List()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, ri := range list {
		id := ri.Session.ID
		rc, err := d.Open(id)
		if err != nil {
			return n, err
		}
		_, err = s.Put(id, rc)
		rc.Close()
		if err != nil {
			return n, fmt.Errorf("import recording %s: %w", id, err)
		}
		if err := d.Delete(id); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}
