package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

func TestLiveOf(t *testing.T) {
	tests := []struct {
		name, method, target string
		upgrade              bool
		want                 string // kind, "" for not live
		command              []string
	}{
		{"list", "GET", "/api/v1/namespaces/default/pods", false, "", nil},
		{"watch", "GET", "/api/v1/namespaces/default/pods?watch=true", false, proto.LiveWatch, nil},
		{"logs", "GET", "/api/v1/namespaces/default/pods/web/log", false, "", nil},
		{"logs -f", "GET", "/api/v1/namespaces/default/pods/web/log?follow=true&container=c", false, proto.LiveLogs, nil},
		{"exec", "POST", "/api/v1/namespaces/default/pods/web/exec?command=sh&command=-c&container=c", true, proto.LiveExec, []string{"sh", "-c"}},
		{"attach", "POST", "/api/v1/namespaces/default/pods/web/attach", true, proto.LiveAttach, nil},
		{"port-forward", "POST", "/api/v1/namespaces/default/pods/web/portforward", true, proto.LivePortForward, nil},
		{"proxy", "GET", "/api/v1/namespaces/default/services/web/proxy/x", true, proto.LiveProxy, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, tt.target, nil)
			if tt.upgrade {
				r.Header.Set("Connection", "Upgrade")
				r.Header.Set("Upgrade", "SPDY/3.1")
			}
			ls := liveOf(parseRequestInfo(r), r, proto.Key{1}, "alice", "c-1", t0)
			if tt.want == "" {
				if ls != nil {
					t.Fatalf("liveOf = %+v, want nil", ls)
				}
				return
			}
			if ls == nil || ls.Kind != tt.want || ls.ID != "c-1" || ls.User != "alice" || ls.Namespace != "default" || !slices.Equal(ls.Command, tt.command) {
				t.Fatalf("liveOf = %+v, want kind %s command %q", ls, tt.want, tt.command)
			}
		})
	}
}

// TestEndStream: the proxy lists its open watch and exec as live
// sessions, says when the list changes, and EndStream cuts the one named
// and no other.
func TestEndStream(t *testing.T) {
	up := &liveUpstream{watch: newWatchUpstream(), upgrade: newEchoUpgrade(t)}
	h := newHarness(t, up, func(c *ProxyConfig) { c.SweepInterval = time.Hour })
	watch, body := openWatch(t, h)
	defer body.Close()
	testkit.Recv(t, h.proxy.LiveChanged(), "a change for the watch")
	exec := openUpgrade(t, h, "SPDY/3.1")

	live, truncated := h.proxy.LiveStreams()
	if len(live) != 2 || truncated || live[0].Kind != proto.LiveWatch || live[1].Kind != proto.LiveExec {
		t.Fatalf("live streams = %+v (truncated %v), want the watch then the exec", live, truncated)
	}
	if live[0].User != "alice@example.com" || live[0].Device != (proto.Key{1}) {
		t.Errorf("watch = %+v", live[0])
	}
	// A short request is not a live session.
	if resp, _ := h.get("/api/v1/pods"); resp.StatusCode != 200 {
		t.Fatalf("list = %d", resp.StatusCode)
	}
	if live, _ := h.proxy.LiveStreams(); len(live) != 2 {
		t.Errorf("after a list, live streams = %+v", live)
	}

	if h.proxy.EndStream("no-such-id") {
		t.Error("EndStream of an unknown id reported it open")
	}
	if !h.proxy.EndStream(live[0].ID) {
		t.Fatal("EndStream of the watch reported it not open")
	}
	waitEOF(t, watch, "watch")
	testkit.Recv(t, up.watch.ended, "upstream watch end")
	exec.echo(t, "the exec goes on")
	testkit.WaitFor(t, "the watch to leave the list", func() bool {
		live, _ := h.proxy.LiveStreams()
		return len(live) == 1 && live[0].Kind == proto.LiveExec
	})

	if !h.proxy.EndStream(live[1].ID) {
		t.Fatal("EndStream of the exec reported it not open")
	}
	exec.waitClosed(t)
	testkit.Recv(t, up.upgrade.ended, "upstream exec end")
}

// TestReportStatus: a report goes out at once, after each change
// (coalesced), and again after a failure, after a backoff or at once
// when something changes.
func TestReportStatus(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	changed := make(chan struct{}, 1)
	sent := make(chan proto.AgentStatus, 16)
	fail := make(chan bool, 16)
	n := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		reportStatus(ctx, changed, nil, time.Hour, func() proto.AgentStatus {
			n++
			return proto.AgentStatus{Version: string(rune('a' + n - 1))}
		}, func(ctx context.Context, st proto.AgentStatus) error {
			sent <- st
			select {
			case f := <-fail:
				if f {
					return errors.New("coordinator down")
				}
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}, slog.New(slog.DiscardHandler))
	}()
	t.Cleanup(func() { cancel(); <-done })

	for i, step := range []struct {
		what   string
		change bool // a live session opened or ended first
		fail   bool // the coordinator refuses this report
	}{
		{"the first report", false, false},
		{"a report after a change", true, true},
		{"a retry after a failure, with no change", false, true},
		{"a report after a failure and a change", true, false},
	} {
		want := string(rune('a' + i))
		if step.change {
			changed <- struct{}{}
		}
		fail <- step.fail
		if st := testkit.Recv(t, sent, step.what); st.Version != want {
			t.Errorf("%s = %+v, want report %s", step.what, st, want)
		}
	}
}

func TestProxyStatusNeverNilStreams(t *testing.T) {
	h := newHarness(t, http.NotFoundHandler())
	if st := h.proxy.status("v1", true, proto.PathCounts{Direct: 2}); st.Streams == nil || st.Version != "v1" || !st.Ready || st.Paths.Direct != 2 {
		t.Errorf("status = %+v", st)
	}
}
