package recording

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

// LiveInterval is how often ShipLive ships what running sessions
// recorded: a watched session is seen about this much behind.
const LiveInterval = time.Second

// maxLiveChunk bounds the body of one append.
const maxLiveChunk = 4 << 20

// Appender ships the part of the running session id's recording read
// from body, which starts at byte off of it, and returns what the
// coordinator answered: how many bytes of the recording it holds, and
// whether someone watches it.
type Appender func(ctx context.Context, id string, off int64, body io.Reader) (proto.RecordingAppended, error)

// liveState is what ShipLive knows of one running session.
type liveState struct {
	sent    int64 // bytes the coordinator holds
	watched bool  // its last answer said someone watches
}

// ShipLive ships, every interval, what each running session recorded
// since the last time, with send, so that the session can be watched
// while it runs, until ctx is done. A session's header goes as soon as
// it begins, so that it can be found at once. Of a session nobody
// watches it ships the header only, then an empty append each interval to learn whether
// someone started to: once someone does, everything recorded so far
// goes, and then what comes. It is a copy for watching: Ship still ships
// the whole recording when the session ends, and a part that failed to
// ship is sent again the next time (from the start, if the coordinator
// lost what it had). Run one ShipLive per Recorder. It returns ctx's
// error.
func (r *Recorder) ShipLive(ctx context.Context, send Appender, interval time.Duration, onError func(id string, err error)) error {
	state := map[string]*liveState{}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case <-r.begun:
		}
		r.shipLive(ctx, send, state, onError)
	}
}

// shipLive makes one round of ShipLive, and forgets the sessions that
// ended.
func (r *Recorder) shipLive(ctx context.Context, send Appender, state map[string]*liveState, onError func(string, error)) {
	running := r.running()
	for id := range state {
		if _, ok := running[id]; !ok {
			delete(state, id)
		}
	}
	for id, s := range running {
		n, head := s.written()
		if n == 0 {
			continue // not begun
		}
		st := state[id]
		if st == nil {
			st = &liveState{}
			state[id] = st
		}
		asked := false
		for ctx.Err() == nil {
			limit := head
			if st.watched {
				limit = n
			}
			to := max(st.sent, min(limit, st.sent+maxLiveChunk))
			if to == st.sent && asked {
				break
			}
			asked = true
			ans, err := s.shipLivePart(ctx, send, st.sent, to)
			if errors.Is(err, os.ErrNotExist) {
				break // it ended meanwhile: Ship has it
			}
			if err != nil {
				var e *coordclient.Error
				if errors.As(err, &e) && e.Status == http.StatusConflict {
					// The coordinator holds less than was sent (it lost
					// it, or another replica took it): from the start.
					st.sent = 0
				}
				if ctx.Err() == nil && onError != nil {
					onError(id, err)
				}
				break
			}
			st.sent, st.watched = ans.Bytes, ans.Watched
		}
	}
}

// running returns the sessions whose recordings are in progress.
func (r *Recorder) running() map[string]*Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]*Session, len(r.live))
	for id, s := range r.live {
		m[id] = s
	}
	return m
}

// written returns how many bytes of the recording are in its file, and
// how many of them are its header; both are 0 before Begin.
func (s *Session) written() (n, header int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c == nil {
		return 0, 0
	}
	return s.c.n, s.headerLen
}

// shipLivePart sends bytes [from, to) of the recording in progress.
func (s *Session) shipLivePart(ctx context.Context, send Appender, from, to int64) (proto.RecordingAppended, error) {
	f, err := os.Open(s.f.Name())
	if err != nil {
		return proto.RecordingAppended{}, err
	}
	defer f.Close()
	return send(ctx, s.meta.ID, from, io.NewSectionReader(f, from, to-from))
}
