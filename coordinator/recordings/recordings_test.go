package recordings

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func cast(id, user string, start time.Time) []byte {
	return []byte(`{"version":2,"width":80,"height":24,"timestamp":1,"clustral":{"id":"` + id + `","user":"` + user +
		`","cluster":"prod","namespace":"default","pod":"p","subresource":"exec","protocol":"v5.channel.k8s.io","start":"` +
		start.Format(time.RFC3339) + `","correlation":"` + id + `","stdin":false,"max_bytes":1024}}` + "\n" + `[0.1, "o", "hi"]` + "\n")
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
	rc, err := d.Open("a")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, a) {
		t.Errorf("open a = %q", got)
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
