package recording

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/clustral/clustral/pkg/coordclient"
)

// LiveInterval is how often ShipLive ships what running sessions
// recorded: a session is watched about this much behind.
const LiveInterval = time.Second

// maxLiveChunk bounds the body of one append.
const maxLiveChunk = 4 << 20

// Appender ships the part of the running session id's recording read
// from body, which starts at byte off of it, and returns how many bytes
// of the recording the coordinator holds.
type Appender func(ctx context.Context, id string, off int64, body io.Reader) (int64, error)

// ShipLive ships, every interval, what each running session recorded
// since the last time, with send, so that the session can be watched
// while it runs, until ctx is done. It is a copy for watching: Ship
// still ships the whole recording when the session ends, and a live part
// that failed to ship is sent again the next time (from the start, if
// the coordinator lost what it had). Run one ShipLive per Recorder. It
// returns ctx's error.
func (r *Recorder) ShipLive(ctx context.Context, send Appender, interval time.Duration, onError func(id string, err error)) error {
	sent := map[string]int64{}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		r.shipLive(ctx, send, sent, onError)
	}
}

// shipLive ships what running sessions recorded beyond sent[id], and
// forgets the sessions that ended.
func (r *Recorder) shipLive(ctx context.Context, send Appender, sent map[string]int64, onError func(string, error)) {
	running := r.running()
	for id := range sent {
		if _, ok := running[id]; !ok {
			delete(sent, id)
		}
	}
	for id, s := range running {
		for n := s.written(); sent[id] < n && ctx.Err() == nil; {
			have, err := s.shipLivePart(ctx, send, sent[id], min(n, sent[id]+maxLiveChunk))
			if errors.Is(err, os.ErrNotExist) {
				break // it ended meanwhile: Ship has it
			}
			if err != nil {
				var e *coordclient.Error
				if errors.As(err, &e) && e.Status == http.StatusConflict {
					// The coordinator holds less than was sent (it lost
					// it, or another replica took it): from the start.
					sent[id] = 0
				}
				if ctx.Err() == nil && onError != nil {
					onError(id, err)
				}
				break
			}
			sent[id] = have
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

// written returns how many bytes of the recording are in its file.
func (s *Session) written() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c == nil {
		return 0
	}
	return s.c.n
}

// shipLivePart sends bytes [from, to) of the recording in progress.
func (s *Session) shipLivePart(ctx context.Context, send Appender, from, to int64) (int64, error) {
	f, err := os.Open(s.f.Name())
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return send(ctx, s.meta.ID, from, io.NewSectionReader(f, from, to-from))
}
