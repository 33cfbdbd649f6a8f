package recording

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"testing"

	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

// liveStore is a coordinator's live parts, as Append keeps them.
type liveStore struct {
	parts map[string][]byte
	fail  error // the next append fails with it
	calls int
}

func (l *liveStore) append(_ context.Context, id string, off int64, body io.Reader) (int64, error) {
	l.calls++
	if err := l.fail; err != nil {
		l.fail = nil
		return 0, err
	}
	b, err := io.ReadAll(body)
	if err != nil {
		return 0, err
	}
	have := l.parts[id]
	if off > int64(len(have)) {
		return 0, &coordclient.Error{Problem: proto.Problem{Title: "gap", Status: http.StatusConflict}}
	}
	l.parts[id] = append(have, b[int64(len(have))-off:]...)
	return int64(len(l.parts[id])), nil
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
	sent := map[string]int64{}
	var errs []error
	ship := func() {
		t.Helper()
		r.shipLive(context.Background(), store.append, sent, func(_ string, err error) { errs = append(errs, err) })
	}
	file := func() []byte {
		t.Helper()
		b, err := os.ReadFile(s.f.Name())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
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
		synced bool // the coordinator holds the whole file after it
	}{
		{"header", nil, 0, true},
		{"output", func() { output("first\n") }, 0, true},
		{"nothing new", nil, 0, true},
		{"outage", func() { output("second\n"); store.fail = errors.New("coordinator down") }, 1, false},
		{"after the outage", nil, 1, true},
		{"coordinator lost the part", func() {
			output("third\n")
			store.parts["live-1"] = nil // a restarted coordinator
		}, 2, false},
		{"sent again from the start", nil, 2, true},
	} {
		if step.before != nil {
			step.before()
		}
		ship()
		if len(errs) != step.errs {
			t.Fatalf("step %d (%s): errors %v, want %d", i, step.name, errs, step.errs)
		}
		if step.synced {
			if got, want := store.parts["live-1"], file(); !bytes.Equal(got, want) {
				t.Fatalf("step %d (%s): coordinator holds %q, want %q", i, step.name, got, want)
			}
		}
	}
	if _, ok := store.parts["idle-2"]; ok {
		t.Errorf("a session that never began was shipped: %q", store.parts["idle-2"])
	}
	// The session ends: its part is no longer shipped, the whole
	// recording waits for Ship.
	res := s.Close()
	calls := store.calls
	ship()
	if store.calls != calls || len(sent) != 0 {
		t.Errorf("after Close: %d more appends, sent %v; want none", store.calls-calls, sent)
	}
	final, err := os.ReadFile(res.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(final, store.parts["live-1"]) {
		t.Errorf("the live part is not the start of the recording:\n%q\n%q", store.parts["live-1"], final)
	}
}

// TestShipLiveChunks: a large backlog goes in chunks of maxLiveChunk, all
// in one round.
func TestShipLiveChunks(t *testing.T) {
	r := newRecorder(t, 1<<30)
	s := begun(t, r, "big-1", false, "websocket", "v5.channel.k8s.io")
	t.Cleanup(func() { s.Close() })
	msg := bytes.Repeat([]byte("y"), 1<<20)
	var pod [][]byte
	for range 9 {
		pod = append(pod, wsMessage(1, string(msg), nil))
	}
	if _, err := replay(s, nil, pod); err != nil {
		t.Fatal(err)
	}
	store := &liveStore{parts: map[string][]byte{}}
	r.shipLive(context.Background(), store.append, map[string]int64{}, func(_ string, err error) { t.Error(err) })
	if got, want := int64(len(store.parts["big-1"])), s.written(); got != want || store.calls != int(want/maxLiveChunk)+1 {
		t.Errorf("shipped %d bytes in %d appends, want %d in %d", got, store.calls, want, want/maxLiveChunk+1)
	}
}
