package recordings

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
)

// TestShared: recordings in a shared store are put in chunks, read back
// whole from another handle on the store, stored once, listed newest
// first, deleted with their chunks; a live part appended on one replica
// is read on the other and ends when the recording is stored; a
// directory's recordings move in.
func TestShared(t *testing.T) {
	mem := store.NewMem()
	a := NewShared(mem, nil)
	dirB, err := NewDir(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	b := NewShared(mem.Replica(), nil)

	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// Two and a half chunks of output.
	big := append(cast("big", "alice", t0), strings.Repeat(`[0.2, "o", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]`+"\n", 2*ChunkSize/40+ChunkSize/80)...)
	small := cast("small", "bob", t0.Add(time.Minute))
	for _, tt := range []struct {
		id   string
		body []byte
		want string // error text; empty for success
	}{
		{"big", big, ""},
		{"big", big, ""}, // a resend
		{"small", small, ""},
		{"big", append(bytes.Clone(big), '\n'), "another recording is stored under this id"},
		{"c", small, `its header names session "small"`},
		{"d", []byte("{}"), "no complete header line"},
		{"e", nil, "no complete header line"},
		{"../e", small, "is not letters, digits"},
	} {
		info, err := a.Put(tt.id, bytes.NewReader(tt.body))
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("put %s: %v", tt.id, err)
		case tt.want == "" && (info.Session.ID != tt.id || info.Bytes != int64(len(tt.body)) || info.SHA256 != hexSHA(tt.body)):
			t.Errorf("put %s = %+v", tt.id, info)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("put %s = %v, want an error naming %q", tt.id, err, tt.want)
		}
	}
	list, err := b.List()
	if err != nil || len(list) != 2 || list[0].Session.ID != "small" || list[1].Session.ID != "big" {
		t.Fatalf("list on the other replica = %+v, %v; want small then big", list, err)
	}
	if !holds(t, b, "big", big) {
		t.Fatalf("read back on the other replica: not what was put")
	}
	if sum, err := Digest(b, "big"); err != nil || sum != list[1].SHA256 {
		t.Errorf("digest = %s, %v; listed %s", sum, err, list[1].SHA256)
	}
	if _, err := b.Open("zz"); !errors.Is(err, ErrNotFound) {
		t.Errorf("open missing = %v", err)
	}

	// A live part is read on the other replica; storing ends it.
	if _, err := a.Append("run", 0, bytes.NewReader(cast("run", "carol", t0))); err != nil {
		t.Fatal(err)
	}
	if rc, err := b.OpenLive("run"); err != nil {
		t.Errorf("the live part on the other replica: %v", err)
	} else {
		rc.Close()
	}
	if _, err := b.Put("run", bytes.NewReader(cast("run", "carol", t0))); err != nil {
		t.Fatal(err)
	}
	if _, err := a.OpenLive("run"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the live part after the recording was stored: %v", err)
	}
	if _, err := a.Append("run", 0, bytes.NewReader(cast("run", "carol", t0))); !errors.Is(err, ErrConflict) {
		t.Errorf("append after the recording was stored = %v, want ErrConflict", err)
	}

	if err := b.Delete("big"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Open("big"); !errors.Is(err, ErrNotFound) {
		t.Errorf("open after Delete = %v", err)
	}
	mem.View(func(tx store.Tx) error {
		return tx.ForEach(store.RecordingChunks, func(k string, _ []byte) error {
			if strings.HasPrefix(k, "big/") {
				t.Errorf("chunk %s left after Delete", k)
			}
			return nil
		})
	})
	if err := b.Delete("big"); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete again = %v, want ErrNotFound", err)
	}

	// A directory's recordings move in, once.
	old := cast("old", "dave", t0.Add(-time.Hour))
	if _, err := dirB.Put("old", bytes.NewReader(old)); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Import(dirB); n != 1 || err != nil {
		t.Fatalf("import = %d, %v", n, err)
	}
	if n, err := b.Import(dirB); n != 0 || err != nil {
		t.Fatalf("import again = %d, %v", n, err)
	}
	if !holds(t, a, "old", old) {
		t.Errorf("the imported recording is not what the directory held")
	}
}
