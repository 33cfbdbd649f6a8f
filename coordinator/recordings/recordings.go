// Package recordings stores the session recordings that agents ship to
// the coordinator (asciicast v2 files, see agent/recording), behind the
// Store interface so that an object store can take the place of the data
// directory.
package recordings

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/clustral/clustral/proto"
)

// ErrNotFound is returned (wrapped) for a recording the store does not
// hold.
var ErrNotFound = errors.New("no such recording")

// ErrConflict is returned (wrapped) by Put when the store holds another
// recording under the same id.
var ErrConflict = errors.New("another recording is stored under this id")

// Store keeps recordings by session id. Implementations are safe for
// concurrent use.
type Store interface {
	// Put stores the recording read from r under id, and returns what it
	// stored. Putting the same bytes again succeeds (an agent resends a
	// recording whose acknowledgement it lost); other bytes under a
	// stored id fail with ErrConflict and change nothing.
	Put(id string, r io.Reader) (proto.RecordingInfo, error)
	// Open returns the recording id, to be closed by the caller.
	Open(id string) (io.ReadCloser, error)
	// List returns every stored recording, newest session first.
	List() ([]proto.RecordingInfo, error)
	// Delete removes the stored recording id, and its live part if any.
	Delete(id string) error

	// Append adds the bytes read from r at offset off of the live
	// recording id, the part of a running session shipped so far, and
	// returns how many bytes of it the store holds. Bytes before the
	// end of what it holds are skipped: the agent sent them before (it
	// resends from 0 when unsure). An offset past the end fails with
	// ErrGap. Once id is stored, Append fails with ErrConflict; Put
	// drops the live part.
	Append(id string, off int64, r io.Reader) (int64, error)
	// OpenLive returns the live part of the recording id, to be closed
	// by the caller, or ErrNotFound.
	OpenLive(id string) (io.ReadCloser, error)
	// WatchLive records that someone reads the live part of id now.
	WatchLive(id string)
	// LiveWatched reports whether someone read the live part of id
	// within proto.RecordingWatchWindow: the agent sends a session's
	// bytes live only then.
	LiveWatched(id string) bool
	// DropStaleLive removes the live parts last appended to before
	// before: those of sessions whose agent never shipped the whole
	// recording (a running session's agent appends every second). It
	// returns how many it removed.
	DropStaleLive(before time.Time) (int, error)
}

// StaleLive is how long after its last append a live part is taken for
// one whose agent will never ship the whole recording, and removed
// (DropStaleLive). The agent of a running session appends every second,
// and resends from the start a live part that went (ErrGap).
const StaleLive = time.Hour

// ErrGap is returned (wrapped) by Append for an offset past the end of
// what the store holds of a live recording.
var ErrGap = errors.New("the offset is past the end of the live recording")

// Ext is the file name extension of a recording in a Dir.
const Ext = ".cast"

// Dir is a Store in a directory: one file per recording, <id>.cast,
// written to a temporary file, synced, and renamed into place. The live
// part of a running session is live/<id>.cast, appended to as it comes
// and not synced: the agent keeps the recording until its PUT.
type Dir struct {
	path string
	now  func() time.Time
	// mu orders Append with the end of Put, so that no live part
	// outlives its stored recording.
	mu sync.Mutex

	watchedMu sync.Mutex
	watched   map[string]time.Time // live part id → when it was last read
}

// liveDir is the subdirectory of live parts.
const liveDir = "live"

// NewDir returns the Store in dir, creating it if needed. now stamps
// stored recordings; nil means time.Now.
func NewDir(dir string, now func() time.Time) (*Dir, error) {
	if err := os.MkdirAll(filepath.Join(dir, liveDir), 0o700); err != nil {
		return nil, fmt.Errorf("recordings directory: %w", err)
	}
	if now == nil {
		now = time.Now
	}
	return &Dir{path: dir, now: now}, nil
}

// Path returns the directory.
func (d *Dir) Path() string { return d.path }

func (d *Dir) file(id string) string { return filepath.Join(d.path, id+Ext) }

func (d *Dir) liveFile(id string) string { return filepath.Join(d.path, liveDir, id+Ext) }

// Put implements Store.
func (d *Dir) Put(id string, r io.Reader) (proto.RecordingInfo, error) {
	if err := proto.CheckRecordingID(id); err != nil {
		return proto.RecordingInfo{}, err
	}
	tmp, err := os.CreateTemp(d.path, ".put-*")
	if err != nil {
		return proto.RecordingInfo{}, fmt.Errorf("store recording %s: %w", id, err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), r)
	if err != nil {
		return proto.RecordingInfo{}, fmt.Errorf("store recording %s: %w", id, err)
	}
	if err := tmp.Sync(); err != nil {
		return proto.RecordingInfo{}, fmt.Errorf("store recording %s: %w", id, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return proto.RecordingInfo{}, err
	}
	hdr, err := readHeader(tmp)
	if err != nil {
		return proto.RecordingInfo{}, fmt.Errorf("recording %s: %w", id, err)
	}
	if hdr.Session.ID != id {
		return proto.RecordingInfo{}, fmt.Errorf("recording %s: its header names session %q", id, hdr.Session.ID)
	}
	info := proto.RecordingInfo{Session: hdr.Session, Bytes: n, SHA256: sum, Stored: d.now().UTC()}
	if old, err := d.info(id); err == nil {
		if old.SHA256 == sum {
			d.dropLive(id)
			return old, nil
		}
		return proto.RecordingInfo{}, fmt.Errorf("%w: %s", ErrConflict, id)
	}
	if err := os.Chtimes(tmp.Name(), info.Stored, info.Stored); err != nil {
		return proto.RecordingInfo{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// Link, not rename: it fails if a concurrent Put stored id meanwhile.
	if err := os.Link(tmp.Name(), d.file(id)); err != nil {
		if old, ierr := d.info(id); errors.Is(err, fs.ErrExist) && ierr == nil {
			if old.SHA256 == sum {
				return old, nil
			}
			return proto.RecordingInfo{}, fmt.Errorf("%w: %s", ErrConflict, id)
		}
		return proto.RecordingInfo{}, fmt.Errorf("store recording %s: %w", id, err)
	}
	os.Remove(d.liveFile(id))
	return info, nil
}

// readHeader reads a recording's first line as its header.
func readHeader(r io.Reader) (proto.RecordingHeader, error) {
	line, err := bufio.NewReaderSize(r, 16<<10).ReadSlice('\n')
	if err != nil {
		return proto.RecordingHeader{}, errors.New("recording has no complete header line")
	}
	return proto.ParseRecordingHeader(line)
}

// info describes the stored recording id.
func (d *Dir) info(id string) (proto.RecordingInfo, error) {
	f, err := os.Open(d.file(id))
	if errors.Is(err, fs.ErrNotExist) {
		return proto.RecordingInfo{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return proto.RecordingInfo{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return proto.RecordingInfo{}, err
	}
	fi, err := f.Stat()
	if err != nil {
		return proto.RecordingInfo{}, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return proto.RecordingInfo{}, err
	}
	hdr, err := readHeader(f)
	if err != nil {
		return proto.RecordingInfo{}, fmt.Errorf("stored recording %s: %w", id, err)
	}
	return proto.RecordingInfo{Session: hdr.Session, Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil)), Stored: fi.ModTime().UTC()}, nil
}

// Open implements Store.
func (d *Dir) Open(id string) (io.ReadCloser, error) { return d.open(id, d.file) }

// open opens the file of recording id that path names.
func (d *Dir) open(id string, path func(string) string) (io.ReadCloser, error) {
	if err := proto.CheckRecordingID(id); err != nil {
		return nil, err
	}
	f, err := os.Open(path(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return f, err
}

// List implements Store. A file that is not a recording is skipped.
func (d *Dir) List() ([]proto.RecordingInfo, error) {
	ents, err := os.ReadDir(d.path)
	if err != nil {
		return nil, fmt.Errorf("list recordings: %w", err)
	}
	var out []proto.RecordingInfo
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), Ext)
		if !ok || proto.CheckRecordingID(id) != nil {
			continue
		}
		info, err := d.info(id)
		if err != nil {
			continue
		}
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b proto.RecordingInfo) int { return b.Session.Start.Compare(a.Session.Start) })
	return out, nil
}

// dropLive removes the live part of id, stored meanwhile.
func (d *Dir) dropLive(id string) {
	d.mu.Lock()
	os.Remove(d.liveFile(id))
	d.mu.Unlock()
}

// Delete implements Store.
func (d *Dir) Delete(id string) error {
	if err := proto.CheckRecordingID(id); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	os.Remove(d.liveFile(id))
	err := os.Remove(d.file(id))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return fmt.Errorf("delete recording %s: %w", id, err)
	}
	return nil
}

// Append implements Store. A live part holds at most
// proto.MaxRecordingUpload bytes.
func (d *Dir) Append(id string, off int64, r io.Reader) (int64, error) {
	if err := proto.CheckRecordingID(id); err != nil {
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := os.Stat(d.file(id)); err == nil {
		return 0, fmt.Errorf("%w: %s (the session ended)", ErrConflict, id)
	}
	f, err := os.OpenFile(d.liveFile(id), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("live recording %s: %w", id, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("live recording %s: %w", id, err)
	}
	size := fi.Size()
	if off > size {
		return size, fmt.Errorf("%w: %s holds %d bytes, the append starts at %d", ErrGap, id, size, off)
	}
	if _, err := io.CopyN(io.Discard, r, size-off); err != nil {
		// The body ends before what the store holds: nothing new.
		return size, nil
	}
	room := proto.MaxRecordingUpload - size
	n, err := io.Copy(f, io.LimitReader(r, room))
	size += n
	if now := d.now(); n > 0 || now.Sub(fi.ModTime()) >= liveTouch {
		// The modification time on d's clock, for DropStaleLive; an
		// empty append (the session runs, nothing new) only now and
		// then.
		os.Chtimes(d.liveFile(id), now, now)
	}
	if err != nil {
		return size, fmt.Errorf("live recording %s: %w", id, err)
	}
	if n == room {
		if k, _ := r.Read(make([]byte, 1)); k > 0 {
			return size, fmt.Errorf("live recording %s: over %d bytes", id, int64(proto.MaxRecordingUpload))
		}
	}
	return size, nil
}

// OpenLive implements Store.
func (d *Dir) OpenLive(id string) (io.ReadCloser, error) { return d.open(id, d.liveFile) }

// WatchLive implements Store, in memory: the directory is this
// coordinator's alone.
func (d *Dir) WatchLive(id string) {
	d.watchedMu.Lock()
	defer d.watchedMu.Unlock()
	if d.watched == nil {
		d.watched = map[string]time.Time{}
	}
	d.watched[id] = d.now()
}

// LiveWatched implements Store. Reads older than the window are
// forgotten as they are looked at.
func (d *Dir) LiveWatched(id string) bool {
	now := d.now()
	d.watchedMu.Lock()
	defer d.watchedMu.Unlock()
	for k, t := range d.watched {
		if now.Sub(t) > proto.RecordingWatchWindow {
			delete(d.watched, k)
		}
	}
	_, ok := d.watched[id]
	return ok
}

// DropStaleLive implements Store: a live file goes by its modification
// time, which every append sets (an empty one at most liveTouch stale).
func (d *Dir) DropStaleLive(before time.Time) (int, error) {
	ents, err := os.ReadDir(filepath.Join(d.path, liveDir))
	if err != nil {
		return 0, fmt.Errorf("list live recordings: %w", err)
	}
	n := 0
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || !fi.ModTime().Before(before) {
			continue
		}
		d.mu.Lock()
		err = os.Remove(filepath.Join(d.path, liveDir, e.Name()))
		d.mu.Unlock()
		if err == nil {
			n++
		}
	}
	return n, nil
}

// Digest returns the hex SHA-256 of the stored recording id.
func Digest(s Store, id string) (string, error) {
	rc, err := s.Open(id)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		return "", fmt.Errorf("read recording %s: %w", id, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
