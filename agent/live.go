package agent

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

// Live sessions: the long-lived requests open through the proxy, which
// the agent reports to the coordinator (reportStatus) and an
// administrator may end (EndStream).

// liveOf returns what r reports as a live session, nil for a request that
// is not long-lived (one answer and done).
func liveOf(info requestInfo, r *http.Request, key proto.Key, login, corr string, start time.Time) *proto.LiveStream {
	q := r.URL.Query()
	kind := ""
	switch {
	case info.upgrade && info.Subresource == "exec":
		kind = proto.LiveExec
	case info.upgrade && info.Subresource == "attach":
		kind = proto.LiveAttach
	case info.upgrade && info.Subresource == "portforward":
		kind = proto.LivePortForward
	case info.upgrade:
		kind = proto.LiveProxy
	case info.Verb == "watch":
		kind = proto.LiveWatch
	case info.Subresource == "log" && q.Get("follow") == "true":
		kind = proto.LiveLogs
	default:
		return nil
	}
	ls := &proto.LiveStream{ID: corr, Kind: kind, User: login, Device: key, Path: info.Path, Started: start.UTC()}
	if info.IsResourceRequest {
		ls.Namespace, ls.Resource, ls.Name, ls.Subresource = info.Namespace, info.Resource, info.Name, info.Subresource
	}
	if kind == proto.LiveExec || kind == proto.LiveAttach || kind == proto.LiveLogs {
		ls.Container = q.Get("container")
	}
	if kind == proto.LiveExec {
		ls.Command = q["command"]
	}
	return ls
}

// LiveStreams returns the long-lived requests open now, oldest first, at
// most proto.MaxLiveStreams; truncated reports that there were more.
func (p *Proxy) LiveStreams() (out []proto.LiveStream, truncated bool) {
	p.mu.Lock()
	for _, pl := range p.live {
		for s := range pl.streams {
			if s.live != nil {
				ls := *s.live
				if s.recording.Load() {
					ls.Recording = s.corr // a recording's id is its session's correlation
				}
				out = append(out, ls)
			}
		}
	}
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b proto.LiveStream) int {
		return cmp.Or(a.Started.Compare(b.Started), cmp.Compare(a.ID, b.ID))
	})
	if len(out) > proto.MaxLiveStreams {
		return out[:proto.MaxLiveStreams], true
	}
	return out, false
}

// LiveChanged returns a channel that receives (coalesced) after a live
// session opens or ends.
func (p *Proxy) LiveChanged() <-chan struct{} { return p.liveCh }

// liveChanged tells LiveChanged's reader that s, if it is a live
// session, opened, ended or changed. It does not block, and needs no
// lock.
func (p *Proxy) liveChanged(s *stream) {
	if s.live == nil {
		return
	}
	select {
	case p.liveCh <- struct{}{}:
	default:
	}
}

// EndStream ends the live session id (LiveStream.ID) at once, telling the
// client that an administrator ended it, and reports whether it was open.
// An upgraded stream, or one on an HTTP/1 connection that answered
// already, has its connection closed too; a stream on a shared HTTP/2
// connection is reset alone.
func (p *Proxy) EndStream(id string) bool {
	var found *stream
	p.mu.Lock()
	for _, pl := range p.live {
		for s := range pl.streams {
			if s.live != nil && s.corr == id {
				found = s
			}
		}
	}
	p.mu.Unlock()
	if found == nil {
		return false
	}
	d := deny(http.StatusForbidden, proto.CodeForbidden,
		"An administrator ended this %s on cluster '%s'. Ask an administrator why before you open it again.", found.live.Kind, p.cluster)
	found.cancel(d)
	if found.conn != nil && found.responded.Load() && (found.upgraded.Load() || !found.h2) {
		found.conn.Close()
	}
	p.log.LogAttrs(found.ctx, slog.LevelInfo, "live session ended by an administrator", appendRequestIDs([]slog.Attr{
		slog.String("cluster", p.cluster), slog.String("user", found.login), slog.String("kind", found.live.Kind)},
		found.corr, found.trace)...)
	return true
}

// AgentStatus is what the agent reports of itself: version, readiness and
// paths are the caller's; the proxy adds its live sessions.
func (p *Proxy) status(version string, ready bool, paths proto.PathCounts) proto.AgentStatus {
	st := proto.AgentStatus{Version: version, Ready: ready, Paths: paths}
	st.Streams, st.Truncated = p.LiveStreams()
	if st.Streams == nil {
		st.Streams = []proto.LiveStream{}
	}
	return st
}

// statusCoalesce is how long reportStatus waits after a change for more
// before it reports: a burst of watches opening is one report.
const statusCoalesce = 100 * time.Millisecond

// statusRetryMin is the first wait before a failed report is sent
// again; the wait doubles up to the report interval.
const statusRetryMin = time.Second

// reportStatus sends status() with send after every change of the live
// sessions or of readiness (coalesced) and every interval, until ctx is
// done. A failed report is logged once and sent again after a backoff
// from statusRetryMin up to interval, or at the next change.
func reportStatus(ctx context.Context, changed, readyChanged <-chan struct{}, interval time.Duration, status func() proto.AgentStatus,
	send func(context.Context, proto.AgentStatus) error, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	retry := coordclient.Backoff(min(statusRetryMin, interval), interval)
	failing := false
	for {
		var again <-chan time.Time
		if err := send(ctx, status()); err != nil {
			if ctx.Err() != nil {
				return
			}
			if !failing {
				log.Warn("report live sessions to the coordinator; retrying", "err", err)
			}
			failing = true
			again = time.After(retry.Step())
		} else if failing {
			failing = false
			retry = coordclient.Backoff(min(statusRetryMin, interval), interval)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-again:
		case <-readyChanged:
		case <-changed:
			select {
			case <-ctx.Done():
				return
			case <-time.After(statusCoalesce):
			}
		}
	}
}
