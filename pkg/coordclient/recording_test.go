package coordclient

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

// TestFollowRecording: the stream gives a running session's recording as
// it grows, asking from where the last answer ended, and ends once the
// recording is stored.
func TestFollowRecording(t *testing.T) {
	var (
		mu      sync.Mutex
		polls   []string
		answers = []struct{ body, state string }{
			{"head\n", proto.RecordingStateLive},
			{"", proto.RecordingStateLive}, // nothing new yet
			{"[1, \"o\", \"a\"]\n", proto.RecordingStateLive},
			{"[2, \"o\", \"b\"]\n", proto.RecordingStateStored},
		}
	)
	srv, _ := server(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		polls = append(polls, r.URL.Query().Get(proto.RecordingParamOffset)+" "+r.URL.Query().Get(proto.RecordingParamLive))
		a := answers[0]
		answers = answers[1:]
		w.Header().Set(proto.HeaderRecordingState, a.state)
		io.WriteString(w, a.body)
	})
	c := New(srv.URL, "t", srv.Client())
	rc := c.FollowRecording(context.Background(), "s-1", time.Millisecond)
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if want := "head\n[1, \"o\", \"a\"]\n[2, \"o\", \"b\"]\n"; string(got) != want {
		t.Errorf("followed %q, want %q", got, want)
	}
	want := []string{" true", "5 true", "5 true", strconv.Itoa(5+len("[1, \"o\", \"a\"]\n")) + " true"}
	if len(polls) != len(want) {
		t.Fatalf("polls %q, want %q", polls, want)
	}
	for i := range want {
		if polls[i] != want[i] {
			t.Errorf("poll %d asked %q, want %q", i, polls[i], want[i])
		}
	}

	// A recording that does not exist fails the first read; a cancelled
	// follow ends.
	srv404, _ := server(t, problem(404, proto.Problem{Title: "no recording s-2", Code: proto.CodeNotFound}))
	if _, err := io.ReadAll(New(srv404.URL, "t", srv404.Client()).FollowRecording(context.Background(), "s-2", time.Millisecond)); err == nil {
		t.Error("following a missing recording did not fail")
	}
	srvLive, _ := server(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(proto.HeaderRecordingState, proto.RecordingStateLive)
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := io.ReadAll(New(srvLive.URL, "t", srvLive.Client()).FollowRecording(ctx, "s-3", time.Hour)); err == nil {
		t.Error("a cancelled follow did not end")
	}
}
