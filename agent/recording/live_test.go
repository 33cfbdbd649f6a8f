package recording

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// liveStore is a coordinator's live parts, as Append keeps them.
type liveStore struct {
	parts   map[string][]byte
	watched bool  // what its answers say
	fail    error // the next append fails with it
	calls   int
}

func (l *liveStore) append(_ context.Context, id string, off int64, body io.Reader) (proto.RecordingAppended, error) {
	l.calls++
	if err := l.fail; err != nil {
		l.fail = nil
		return proto.RecordingAppended{}, err
	}
	b, err := io.ReadAll(body)
	if err != nil {
		return proto.RecordingAppended{}, err
	}
	have := l.parts[id]
	if off > int64(len(have)) {
		return proto.RecordingAppended{}, &coordclient.Error{Problem: proto.Problem{Title: "gap", Status: http.StatusConflict}}
	}
	if skip := int64(len(have)) - off; skip < int64(len(b)) {
		l.parts[id] = append(have, b[skip:]...)
	}
	return proto.RecordingAppended{Bytes: int64(len(l.parts[id])), Watched: l.watched}, nil
}

func TestShipLive(t *testing.T) {
	r := newRecorder(t, 0)
	s := begun(t, r, "live-1", false, "websocket", "v5.channel.k8s.io")
	// Not begun: nothing is written, nothing is shipped.
	idle, err := r.Start(meta("idle-2", false), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idle.Abort)
	store := &liveStore{parts: map[string][]byte{}}
	state := map[string]*liveState{}
	var errs []error
	file := func() []byte {
		t.Helper()
		b, err := os.ReadFile(s.f.Name())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	_, head := s.written()
	output := func(text string) {
		t.Helper()
		if _, err := replay(s, nil, [][]byte{wsMessage(1, text, nil)}); err != nil {
			t.Fatal(err)
		}
	}

	for i, step := range []struct {
		name   string
		before func()
		errs   int
		holds  int64 // bytes the coordinator holds after it; -1: the whole file
	}{
		{"header", nil, 0, head},
		{"nobody watches: the header only", func() { output("first\n") }, 0, head},
		{"someone watches: everything so far", func() { store.watched = true }, 0, -1},
		{"output as it comes", func() { output("second\n") }, 0, -1},
		{"nothing new", nil, 0, -1},
		{"outage", func() { output("third\n"); store.fail = errors.New("coordinator down") }, 1, head + 1},
		{"after the outage", nil, 1, -1},
		{"coordinator lost the part", func() {
			output("fourth\n")
			store.parts["live-1"] = nil // a restarted coordinator
		}, 2, 0},
		{"sent again from the start", nil, 2, -1},
		{"the watcher left", func() { store.watched = false }, 2, -1},
		{"no more output shipped", func() { output("fifth\n") }, 2, int64(len(file()))},
	} {
		var before int64
		if step.before != nil {
			before = int64(len(file()))
			step.before()
		}
		r.shipLive(context.Background(), store.append, state, func(_ string, err error) { errs = append(errs, err) })
		if len(errs) != step.errs {
			t.Fatalf("step %d (%s): errors %v, want %d", i, step.name, errs, step.errs)
		}
		want := file()
		switch {
		case step.holds == head+1: // an outage: what was there before
			want = want[:len(store.parts["live-1"])]
		case step.holds >= 0 && step.name == "no more output shipped":
			want = want[:before]
		case step.holds >= 0:
			want = want[:step.holds]
		}
		if got := store.parts["live-1"]; !bytes.Equal(got, want) {
			t.Fatalf("step %d (%s): coordinator holds %q, want %q", i, step.name, got, want)
		}
	}
	if _, ok := store.parts["idle-2"]; ok {
		t.Errorf("a session that never began was shipped: %q", store.parts["idle-2"])
	}
	// The session ends: its part is no longer shipped, the whole
	// recording waits for Ship.
	res := s.Close()
	calls := store.calls
	r.shipLive(context.Background(), store.append, state, func(_ string, err error) { t.Error(err) })
	if store.calls != calls || len(state) != 0 {
		t.Errorf("after Close: %d more appends, state %v; want none", store.calls-calls, state)
	}
	final, err := os.ReadFile(res.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(final, store.parts["live-1"]) {
		t.Errorf("the live part is not the start of the recording:\n%q\n%q", store.parts["live-1"], final)
	}
}

// TestShipLiveChunks: a watched session's large backlog goes in chunks
// of maxLiveChunk, all in one round.
func TestShipLiveChunks(t *testing.T) {
	r := newRecorder(t, 1<<30)
	s := begun(t, r, "big-1", false, "websocket", "v5.channel.k8s.io")
	t.Cleanup(func() { s.Close() })
	msg := wsMessage(1, string(bytes.Repeat([]byte("y"), 1<<20)), nil)
	if _, err := io.Copy(io.Discard, s.Conn(&upstream{reads: [][]byte{msg, msg, msg, msg, msg, msg, msg, msg, msg}})); err != nil {
		t.Fatal(err)
	}
	store := &liveStore{parts: map[string][]byte{"big-1": nil}, watched: true}
	r.shipLive(context.Background(), store.append, map[string]*liveState{}, func(_ string, err error) { t.Error(err) })
	n, head := s.written()
	// The header, then an append per chunk.
	if got, calls := int64(len(store.parts["big-1"])), int((n-head+maxLiveChunk-1)/maxLiveChunk)+1; n < 2*maxLiveChunk || got != n || store.calls != calls {
		t.Errorf("shipped %d bytes in %d appends, want %d in %d", got, store.calls, n, calls)
	}
}

// TestShipLiveAtBegin: a session's header is shipped when it begins, not
// a tick later.
func TestShipLiveAtBegin(t *testing.T) {
	r := newRecorder(t, 0)
	got := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- r.ShipLive(ctx, func(_ context.Context, id string, off int64, body io.Reader) (proto.RecordingAppended, error) {
			b, _ := io.ReadAll(body)
			select {
			case got <- id:
			default:
			}
			return proto.RecordingAppended{Bytes: off + int64(len(b))}, nil
		}, time.Hour, nil)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	s := begun(t, r, "soon-1", false, "websocket", "v5.channel.k8s.io")
	t.Cleanup(func() { s.Close() })
	if id := testkit.Recv(t, got, "the header shipped at begin"); id != "soon-1" {
		t.Errorf("shipped %s", id)
	}
}
