package recording

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// finish records a short session with id and returns its bytes.
func finish(t *testing.T, r *Recorder, id string) []byte {
	t.Helper()
	s := begun(t, r, id, false, "websocket", "v5.channel.k8s.io")
	if _, err := replay(s, nil, [][]byte{wsMessage(1, id, nil)}); err != nil {
		t.Fatal(err)
	}
	res := s.Close()
	if res.Status != proto.RecordingComplete {
		t.Fatalf("%s: %+v", id, res)
	}
	b, err := os.ReadFile(res.Path)
	if err != nil {
		t.Fatal(err)
	}
	// Distinct modification times keep the order plain.
	at := time.Date(2026, 1, 1, 0, 0, len(r.mustFinished(t)), 0, time.UTC)
	os.Chtimes(res.Path, at, at)
	return b
}

func (r *Recorder) mustFinished(t *testing.T) []string {
	t.Helper()
	ids, err := r.Finished()
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestShip(t *testing.T) {
	r := newRecorder(t, 0)
	want := map[string][]byte{}
	for _, id := range []string{"a-1", "a-2", "bad-3", "a-4"} {
		want[id] = finish(t, r, id)
	}
	var (
		got   []string
		down  = true
		calls int
	)
	send := func(_ context.Context, id string, body io.Reader) error {
		calls++
		if down {
			return coordclient.ErrUnreachable
		}
		if id == "bad-3" {
			return &coordclient.Error{Problem: proto.Problem{Status: http.StatusBadRequest, Title: "no"}}
		}
		b, err := io.ReadAll(body)
		if err != nil || string(b) != string(want[id]) {
			t.Errorf("%s: sent %q, %v", id, b, err)
		}
		got = append(got, id)
		return nil
	}
	var errs []string
	onError := func(id string, err error) { errs = append(errs, id) }

	// The coordinator is away: nothing is lost, the first is retried.
	if err := r.shipAll(context.Background(), send, onError); !errors.Is(err, coordclient.ErrUnreachable) {
		t.Fatalf("shipAll while down = %v", err)
	}
	if ids := r.mustFinished(t); len(ids) != 4 || calls != 1 {
		t.Fatalf("after a failed shipment: %v left, %d calls", ids, calls)
	}
	down = false
	if err := r.shipAll(context.Background(), send, onError); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"a-1", "a-2", "a-4"}) {
		t.Errorf("shipped %v, want a-1 a-2 a-4 in order", got)
	}
	if ids := r.mustFinished(t); len(ids) != 0 {
		t.Errorf("left after shipping: %v", ids)
	}
	if _, err := os.Stat(r.Path("bad-3") + refusedExt); err != nil {
		t.Errorf("the refused recording was not kept aside: %v", err)
	}
	if !slices.Equal(errs, []string{"a-1", "bad-3"}) {
		t.Errorf("errors reported for %v", errs)
	}
}

// TestRecorderFinishesStoppedSessions: the recordings a killed agent was
// writing are finished by the next one, with every byte written.
func TestRecorderFinishesStoppedSessions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rec")
	r, err := New(Options{Dir: dir, Now: clock()})
	if err != nil {
		t.Fatal(err)
	}
	s := begun(t, r, "killed", false, "websocket", "v5.channel.k8s.io")
	if _, err := replay(s, nil, [][]byte{wsMessage(1, "before the kill", nil)}); err != nil {
		t.Fatal(err)
	}
	// The agent dies: the session is never closed.
	r2, err := New(Options{Dir: dir, Now: clock()})
	if err != nil {
		t.Fatal(err)
	}
	if ids := r2.mustFinished(t); !slices.Equal(ids, []string{"killed"}) {
		t.Fatalf("finished after restart: %v", ids)
	}
	b, err := os.ReadFile(r2.Path("killed"))
	if err != nil {
		t.Fatal(err)
	}
	rec := r2.Recovered()
	if len(rec) != 1 || rec[0].ID != "killed" || rec[0].SHA256 != fmt.Sprintf("%x", sha256.Sum256(b)) || rec[0].Bytes != int64(len(b)) ||
		rec[0].Status != proto.RecordingTruncated || rec[0].Session.User != "alice" || rec[0].Session.Pod != "web-0" {
		t.Errorf("recovered %+v", rec)
	}
	if r3, err := New(Options{Dir: dir}); err != nil || len(r3.Recovered()) != 0 {
		t.Errorf("a third start recovers %v, %v; the recording was finished already", r3.Recovered(), err)
	}
	_, evs := readCast(t, r2.Path("killed"))
	if !slices.Equal(merged(evs), []string{"o:before the kill"}) {
		t.Errorf("events %q", evs)
	}
	s.f.Close()
}

func TestShipStopsWithContext(t *testing.T) {
	r := newRecorder(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- r.Ship(ctx, func(context.Context, string, io.Reader) error { return nil }, nil)
	}()
	cancel()
	if err := testkit.Recv(t, done, "Ship's return after its context ended"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Ship = %v", err)
	}
}
