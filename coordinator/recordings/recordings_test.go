package recordings

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

func cast(id, user string, start time.Time) []byte {
	return []byte(`{"version":2,"width":80,"height":24,"timestamp":1,"clustral":{"id":"` + id + `","user":"` + user +
		`","cluster":"prod","namespace":"default","pod":"p","subresource":"exec","protocol":"v5.channel.k8s.io","start":"` +
		start.Format(time.RFC3339) + `","correlation":"` + id + `","stdin":false,"max_bytes":1024}}` + "\n" + `[0.1, "o", "hi"]` + "\n")
}

// holds reports whether s holds want as the recording id, byte for
// byte.
func holds(t *testing.T, s Store, id string, want []byte) bool {
	t.Helper()
	sum, err := Digest(s, id)
	if err != nil {
		t.Errorf("read recording %s: %v", id, err)
	}
	return sum == hexSHA(want)
}

func hexSHA(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestDir(t *testing.T) {
	d, err := NewDir(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a, b := cast("a", "alice", t0), cast("b", "bob", t0.Add(time.Minute))
	for _, tt := range []struct {
		id   string
		body []byte
		want string // error text; empty for success
	}{
		{"a", a, ""},
		{"a", a, ""}, // the same again
		{"b", b, ""},
		{"a", append(bytes.Clone(a), '\n'), "another recording is stored under this id"},
		{"c", b, `its header names session "b"`},
		{"d", []byte("{}"), "no complete header line"},
		{"../e", a, "is not letters, digits"},
	} {
		info, err := d.Put(tt.id, bytes.NewReader(tt.body))
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("put %s: %v", tt.id, err)
		case tt.want == "" && (info.Session.ID != tt.id || info.Bytes != int64(len(tt.body))):
			t.Errorf("put %s = %+v", tt.id, info)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("put %s = %v, want an error naming %q", tt.id, err, tt.want)
		}
	}
	// Litter in the directory is not a recording.
	os.WriteFile(filepath.Join(d.path, "junk.cast"), []byte("junk"), 0o600)
	os.WriteFile(filepath.Join(d.path, "notes.txt"), []byte("x"), 0o600)
	list, err := d.List()
	if err != nil || len(list) != 2 || list[0].Session.ID != "b" || list[1].Session.ID != "a" {
		t.Fatalf("list = %+v, %v; want b then a", list, err)
	}
	if !holds(t, d, "a", a) {
		t.Errorf("recording a is not what was put")
	}
	if _, err := d.Open("zz"); !errors.Is(err, ErrNotFound) {
		t.Errorf("open missing = %v", err)
	}
	if sum, err := Digest(d, "a"); err != nil || sum != list[1].SHA256 {
		t.Errorf("digest = %s, %v; listed %s", sum, err, list[1].SHA256)
	}
	// No temporary file is left behind by the failed puts.
	ents, _ := os.ReadDir(d.path)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".put-") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

// TestLive: a live part grows by appends that skip what it holds and
// refuse a gap, is read back on another handle (another replica, for a
// shared store), is marked watched for the agent, ends when the whole
// recording is stored, and goes once stale.
func TestLive(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	newDir := func(t *testing.T) Store {
		d, err := NewDir(t.TempDir(), clock)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	for _, tc := range []struct {
		name string
		open func(t *testing.T) (Store, Store) // the agent's, a watcher's
	}{
		{"dir", func(t *testing.T) (Store, Store) { d := newDir(t); return d, d }},
		{"shared", func(t *testing.T) (Store, Store) {
			mem := store.NewMem()
			return NewShared(mem, clock), NewShared(mem.Replica(), clock)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, w := tc.open(t)
			testLive(t, d, w, &now)
		})
	}
	// A big live part in a shared store spans chunks, read and sought
	// on another replica.
	mem := store.NewMem()
	a, b := NewShared(mem, clock), NewShared(mem.Replica(), clock)
	big := append(cast("big", "alice", now), strings.Repeat(`[0.2, "o", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]`+"\n", 2*ChunkSize/40)...)
	half := len(big) / 2
	for _, part := range [][2]int{{0, 100}, {100, half}, {0, len(big)}} {
		if n, err := a.Append("big", int64(part[0]), bytes.NewReader(big[part[0]:part[1]])); err != nil || n != int64(part[1]) {
			t.Fatalf("append %v = %d, %v", part, n, err)
		}
	}
	rc, err := b.OpenLive("big")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.(io.Seeker).Seek(int64(half-7), io.SeekStart); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, big[half-7:]) {
		t.Errorf("live part from %d on the other replica: %d bytes, %v; want %d", half-7, len(got), err, len(big)-half+7)
	}
	if err := a.Delete("big"); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete of a live part only = %v, want ErrNotFound", err)
	}
	if n, err := b.DropStaleLive(now.Add(time.Second)); n != 1 || err != nil {
		t.Errorf("drop stale = %d, %v", n, err)
	}
	mem.View(func(tx store.Tx) error {
		return tx.ForEach(store.RecordingChunks, func(k string, _ []byte) error {
			t.Errorf("chunk %s left after the live part went", k)
			return nil
		})
	})
}

func testLive(t *testing.T, d, w Store, now *time.Time) {
	rec := cast("s", "alice", *now)
	head := len(rec) - 10
	live := func() string {
		t.Helper()
		rc, err := w.OpenLive("s")
		if errors.Is(err, ErrNotFound) {
			return "(none)"
		}
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, _ := io.ReadAll(rc)
		return string(b)
	}
	for _, tt := range []struct {
		name  string
		off   int
		body  []byte
		want  int64
		err   error
		holds string
	}{
		{"first part", 0, rec[:head], int64(head), nil, string(rec[:head])},
		{"gap", head + 1, rec[head+1:], int64(head), ErrGap, string(rec[:head])},
		{"resent from the start", 0, rec[:head+4], int64(head + 4), nil, string(rec[:head+4])},
		{"overlap", head, rec[head:], int64(len(rec)), nil, string(rec)},
		{"nothing new", 0, rec[:3], int64(len(rec)), nil, string(rec)},
	} {
		n, err := d.Append("s", int64(tt.off), bytes.NewReader(tt.body))
		if n != tt.want || !errors.Is(err, tt.err) {
			t.Errorf("%s: append = %d, %v; want %d, %v", tt.name, n, err, tt.want, tt.err)
		}
		if got := live(); got != tt.holds {
			t.Errorf("%s: live part %q, want %q", tt.name, got, tt.holds)
		}
	}
	if list, err := d.List(); err != nil || len(list) != 0 {
		t.Errorf("list with a live part only = %+v, %v; want none", list, err)
	}
	// A watcher's read is seen by the agent's store, for a window.
	if d.LiveWatched("s") {
		t.Errorf("watched before anyone read it")
	}
	w.WatchLive("s")
	if !d.LiveWatched("s") {
		t.Errorf("not watched right after a read")
	}
	*now = now.Add(proto.RecordingWatchWindow + time.Second)
	if d.LiveWatched("s") {
		t.Errorf("still watched a window after the last read")
	}
	// Not stale while the agent appends, even nothing; stale after.
	*now = now.Add(StaleLive)
	if _, err := d.Append("s", int64(len(rec)), bytes.NewReader(nil)); err != nil {
		t.Fatal(err)
	}
	if n, err := w.DropStaleLive(now.Add(-StaleLive / 2)); n != 0 || err != nil {
		t.Errorf("drop stale after an append = %d, %v; want 0", n, err)
	}
	if got := live(); got != string(rec) {
		t.Errorf("live part after an empty append: %q", got)
	}
	// The whole recording is stored: the live part goes, and no append
	// brings it back.
	if _, err := d.Put("s", bytes.NewReader(rec)); err != nil {
		t.Fatal(err)
	}
	if got := live(); got != "(none)" {
		t.Errorf("live part after Put: %q", got)
	}
	if _, err := d.Append("s", 0, bytes.NewReader(rec)); !errors.Is(err, ErrConflict) {
		t.Errorf("append after Put = %v, want ErrConflict", err)
	}
	if got := live(); got != "(none)" {
		t.Errorf("live part after a late append: %q", got)
	}
	if err := d.Delete("s"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Open("s"); !errors.Is(err, ErrNotFound) {
		t.Errorf("open after Delete = %v", err)
	}
	if err := d.Delete("s"); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete again = %v, want ErrNotFound", err)
	}
	// A live part whose agent went silent goes.
	if _, err := d.Append("gone", 0, bytes.NewReader(cast("gone", "alice", *now))); err != nil {
		t.Fatal(err)
	}
	*now = now.Add(StaleLive + time.Minute)
	if n, err := w.DropStaleLive(now.Add(-StaleLive)); n != 1 || err != nil {
		t.Errorf("drop stale = %d, %v; want 1", n, err)
	}
	if _, err := w.OpenLive("gone"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the stale live part after DropStaleLive: %v", err)
	}
}
