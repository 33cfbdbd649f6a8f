package live

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/clustral/clustral/proto"
)

// TestSnapshotShared: the viewers that need a snapshot at one revision
// share one copy of the objects, sorted by key; a change makes the next
// one anew, with the change in it.
func TestSnapshotShared(t *testing.T) {
	s := newTestSource(t, 0)
	for _, n := range []string{"c", "a", "b"} {
		upsert(s, "ns", n)
	}
	s.mu.Lock()
	one, two := s.snapshotLocked(), s.snapshotLocked()
	s.mu.Unlock()
	if one != two {
		t.Fatalf("two viewers at revision %d got two snapshots", one.rev)
	}
	names := func(sn *snapshot) (out []string) {
		for _, d := range sn.sorted() {
			out = append(out, d.key.Name)
		}
		return out
	}
	if got := names(one); len(got) != 3 || got[0] != "a" || got[1] != "b" || got[2] != "c" {
		t.Errorf("snapshot = %v, want a b c", got)
	}
	upsert(s, "ns", "d")
	s.mu.Lock()
	three := s.snapshotLocked()
	s.mu.Unlock()
	if three == one || three.rev != one.rev+1 || len(names(three)) != 4 {
		t.Errorf("after a change: snapshot at %d of %v, want a new one at %d with d", three.rev, names(three), one.rev+1)
	}
	if got := names(one); len(got) != 3 {
		t.Errorf("the change altered the snapshot a viewer holds: %v", got)
	}
}

// TestViewerWrite: a line is the event as encoding/json writes it, the
// object spliced in as it is, and a viewer holds no buffer between
// batches.
func TestViewerWrite(t *testing.T) {
	k, raw := pod("ns", "a")
	for _, e := range []proto.LiveEvent{
		{Type: proto.LiveSnapshot, Epoch: "e1", Rev: 7},
		{Type: proto.LiveUpsert, Epoch: "e1", Rev: 8, Kind: k.Kind, Namespace: k.Namespace, Name: k.Name, Object: raw},
		{Type: proto.LiveDelete, Epoch: "e<&>", Rev: 9, Kind: k.Kind, Name: `a"b`, Object: raw},
	} {
		var out bytes.Buffer
		v := &viewer{w: &out}
		if err := v.write(e); err != nil {
			t.Fatal(err)
		}
		if v.buf == nil || out.Len() != 0 {
			t.Fatalf("%s: written before the flush (%q)", e.Type, out.String())
		}
		if err := v.flush(); err != nil {
			t.Fatal(err)
		}
		if v.buf != nil {
			t.Errorf("%s: the viewer holds its buffer after the flush", e.Type)
		}
		want, _ := json.Marshal(e)
		if got := out.String(); got != string(want)+"\n" {
			t.Errorf("%s: line %q, want %q", e.Type, got, want)
		}
	}
}
