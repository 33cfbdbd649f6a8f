package recordings

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// liveEntry is what store.RecordingLive holds of a running session's
// live part in a shared store. Its bytes are chunks in
// store.RecordingChunks under liveChunkKey, each keyed by the offset of
// its first byte; the entry says how many of them count, so a chunk
// written by an append that failed before its entry is never read.
type liveEntry struct {
	Bytes int64 `json:"bytes"`
	// Appended is when the agent last appended (an empty append
	// included), at most liveTouch stale: DropStaleLive goes by it.
	Appended time.Time `json:"appended"`
	// Watched is when a watcher last read the live part, at most a
	// quarter of proto.RecordingWatchWindow stale.
	Watched time.Time `json:"watched,omitzero"`
}

// liveTouch is how stale liveEntry.Appended may be: an empty append, one
// a second from every running session, writes to the store only this
// often.
const liveTouch = time.Minute

// livePrefix is the start of the keys of id's live chunks.
func livePrefix(id string) string { return id + "/live/" }

// liveChunkKey is the key of id's live chunk starting at off: fixed
// width, so that key order is offset order.
func liveChunkKey(id string, off int64) string { return fmt.Sprintf("%s%016x", livePrefix(id), off) }

func (s *Shared) liveEntry(tx store.Tx, id string) (liveEntry, error) {
	var e liveEntry
	err := store.Get(tx, store.RecordingLive, id, &e)
	if errors.Is(err, store.ErrNotFound) {
		return e, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return e, err
}

// live returns what the store holds of id's live part, or ErrNotFound.
func (s *Shared) live(id string) (e liveEntry, err error) {
	if err := proto.CheckRecordingID(id); err != nil {
		return e, err
	}
	err = s.st.View(func(tx store.Tx) error {
		e, err = s.liveEntry(tx, id)
		return err
	})
	return e, err
}

// Append implements Store, in the shared store, so that a watcher on any
// replica reads what the agent appended on one. The new bytes go in
// chunks of at most ChunkSize, one transaction each, then the entry that
// counts them; the agent appends one part at a time, and a chunk written
// twice (a retry, or two replicas taking the same part) holds the same
// bytes. It fails with ErrConflict once id is stored.
func (s *Shared) Append(id string, off int64, r io.Reader) (int64, error) {
	if err := proto.CheckRecordingID(id); err != nil {
		return 0, err
	}
	if _, err := s.entry(id); err == nil {
		return 0, fmt.Errorf("%w: %s (the session ended)", ErrConflict, id)
	} else if !errors.Is(err, ErrNotFound) {
		return 0, fmt.Errorf("live recording %s: %w", id, err)
	}
	e, err := s.live(id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return 0, fmt.Errorf("live recording %s: %w", id, err)
	}
	size := e.Bytes
	if off > size {
		return size, fmt.Errorf("%w: %s holds %d bytes, the append starts at %d", ErrGap, id, size, off)
	}
	if _, err := io.CopyN(io.Discard, r, size-off); err != nil {
		// The body ends before what the store holds: nothing new.
		return size, s.touchLive(id, e, size)
	}
	buf := make([]byte, min(ChunkSize, proto.MaxRecordingUpload-size))
	end := size
	for end < proto.MaxRecordingUpload {
		k, rerr := io.ReadFull(r, buf[:min(int64(len(buf)), proto.MaxRecordingUpload-end)])
		if k > 0 {
			at := end
			if err := s.st.Update(func(tx store.Tx) error { return tx.PutRaw(store.RecordingChunks, liveChunkKey(id, at), buf[:k]) }); err != nil {
				return size, fmt.Errorf("live recording %s: %w", id, err)
			}
			end += int64(k)
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return size, fmt.Errorf("live recording %s: %w", id, rerr)
		}
	}
	if err := s.touchLive(id, e, end); err != nil {
		return size, err
	}
	if end == proto.MaxRecordingUpload {
		if k, _ := r.Read(make([]byte, 1)); k > 0 {
			return end, fmt.Errorf("live recording %s: over %d bytes", id, int64(proto.MaxRecordingUpload))
		}
	}
	return end, nil
}

// touchLive records that id's live part holds size bytes, appended now:
// a write only if the size changed or the entry is liveTouch stale. An
// entry that another append moved past size stays.
func (s *Shared) touchLive(id string, old liveEntry, size int64) error {
	now := s.now()
	if old.Bytes == size && !old.Appended.IsZero() && now.Sub(old.Appended) < liveTouch {
		return nil
	}
	err := s.st.Update(func(tx store.Tx) error {
		if _, err := tx.GetRaw(store.Recordings, id); err == nil {
			return nil // stored meanwhile: Put drops the live part
		}
		e, err := s.liveEntry(tx, id)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		e.Bytes, e.Appended = max(e.Bytes, size), now
		return store.Put(tx, store.RecordingLive, id, e)
	})
	if err != nil {
		return fmt.Errorf("live recording %s: %w", id, err)
	}
	return nil
}

// liveReader reads id's live chunks from pos up to end, fetching each
// chunk once: cur is the chunk that starts at curAt.
type liveReader struct {
	s        *Shared
	id       string
	pos, end int64
	cur      []byte
	curAt    int64
}

func (l *liveReader) Read(p []byte) (int, error) {
	if l.pos >= l.end {
		return 0, io.EOF
	}
	if l.pos < l.curAt || l.pos >= l.curAt+int64(len(l.cur)) {
		if err := l.fetch(); err != nil {
			return 0, fmt.Errorf("read live recording %s: %w", l.id, err)
		}
	}
	n := copy(p[:min(int64(len(p)), l.end-l.pos)], l.cur[l.pos-l.curAt:])
	l.pos += int64(n)
	return n, nil
}

// fetch reads the chunk holding pos: the last one starting at or
// before it.
func (l *liveReader) fetch() error {
	return l.s.st.View(func(tx store.Tx) error {
		found := false
		err := tx.Scan(store.RecordingChunks, livePrefix(l.id), liveChunkKey(l.id, l.pos+1), true, func(k string, v []byte) error {
			var start int64
			if _, err := fmt.Sscanf(strings.TrimPrefix(k, livePrefix(l.id)), "%x", &start); err != nil {
				return fmt.Errorf("live chunk %s: %w", k, err)
			}
			if l.pos < start+int64(len(v)) {
				l.cur, l.curAt, found = bytes.Clone(v), start, true
			}
			return store.StopScan
		})
		if err == nil && !found {
			err = fmt.Errorf("no chunk holds byte %d", l.pos)
		}
		return err
	})
}

// OpenLive implements Store: the live part as the store holds it now,
// read a chunk at a time as the caller reads. The reader seeks.
func (s *Shared) OpenLive(id string) (io.ReadCloser, error) {
	e, err := s.live(id)
	if err != nil {
		return nil, err
	}
	return &liveReader{s: s, id: id, end: e.Bytes}, nil
}

// Seek implements io.Seeker, from the start only.
func (l *liveReader) Seek(off int64, whence int) (int64, error) {
	if whence != io.SeekStart || off < 0 {
		return l.pos, errors.New("live recording: seek from the start to an offset >= 0 only")
	}
	l.pos = off
	return off, nil
}

func (l *liveReader) Close() error { return nil }

// WatchLive implements Store: the read is recorded in the shared store,
// so that the replica the agent appends to answers that someone watches.
func (s *Shared) WatchLive(id string) {
	now := s.now()
	err := s.st.Update(func(tx store.Tx) error {
		e, err := s.liveEntry(tx, id)
		if err != nil || now.Sub(e.Watched) < proto.RecordingWatchWindow/4 {
			return nil
		}
		e.Watched = now
		return store.Put(tx, store.RecordingLive, id, e)
	})
	_ = err // a lost mark costs a watcher at most a window of live bytes
}

// LiveWatched implements Store.
func (s *Shared) LiveWatched(id string) bool {
	e, err := s.live(id)
	return err == nil && s.now().Sub(e.Watched) <= proto.RecordingWatchWindow
}

// dropLive removes the live part of id: its entry, then its chunks, a
// batch per transaction.
func (s *Shared) dropLive(id string) error {
	if err := s.st.Update(func(tx store.Tx) error { return tx.Delete(store.RecordingLive, id) }); err != nil {
		return fmt.Errorf("drop live recording %s: %w", id, err)
	}
	for {
		var keys []string
		err := s.st.View(func(tx store.Tx) error {
			return tx.Scan(store.RecordingChunks, livePrefix(id), livePrefix(id)+"\xff", false, func(k string, _ []byte) error {
				keys = append(keys, k)
				if len(keys) == deleteBatch {
					return store.StopScan
				}
				return nil
			})
		})
		if err == nil && len(keys) > 0 {
			err = s.st.Update(func(tx store.Tx) error {
				for _, k := range keys {
					if err := tx.Delete(store.RecordingChunks, k); err != nil {
						return err
					}
				}
				return nil
			})
		}
		if err != nil {
			return fmt.Errorf("drop live recording %s: %w", id, err)
		}
		if len(keys) < deleteBatch {
			return nil
		}
	}
}

// DropStaleLive implements Store.
func (s *Shared) DropStaleLive(before time.Time) (int, error) {
	var stale []string
	err := s.st.View(func(tx store.Tx) error {
		return tx.ForEach(store.RecordingLive, func(id string, v []byte) error {
			var e liveEntry
			if err := json.Unmarshal(v, &e); err != nil || e.Appended.Before(before) {
				stale = append(stale, id)
			}
			return nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("list live recordings: %w", err)
	}
	for i, id := range stale {
		if err := s.dropLive(id); err != nil {
			return i, err
		}
	}
	return len(stale), nil
}
