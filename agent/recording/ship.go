package recording

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/clustral/clustral/pkg/coordclient"
)

// Sender delivers one finished recording to the coordinator; an error
// keeps it for the next attempt. Delivering a recording twice must be
// harmless (the coordinator stores it once).
type Sender func(ctx context.Context, id string, body io.Reader) error

// Ship sends every finished recording in the directory with send, oldest
// first, and removes each once delivered, until ctx is done: those left
// by an earlier run at once, each new one when its session ends, and any
// that failed again after a backoff (up to 30 s). Run one Ship per
// Recorder. It returns ctx's error.
func (r *Recorder) Ship(ctx context.Context, send Sender, onError func(id string, err error)) error {
	b := coordclient.Backoff(time.Second, 30*time.Second)
	for {
		err := r.shipAll(ctx, send, onError)
		wait := time.Minute
		if err != nil {
			wait = b.Step()
		} else {
			b = coordclient.Backoff(time.Second, 30*time.Second)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-r.notify:
		case <-t.C:
		}
		t.Stop()
	}
}

// shipAll sends the finished recordings, oldest first, and stops at the
// first that fails.
func (r *Recorder) shipAll(ctx context.Context, send Sender, onError func(string, error)) error {
	ids, err := r.Finished()
	if err != nil {
		return err
	}
	for _, id := range ids {
		err := r.shipOne(ctx, send, id)
		if err == nil {
			continue
		}
		if ctx.Err() == nil && onError != nil {
			onError(id, err)
		}
		if !refused(err) {
			return err
		}
		// Sending it again would be refused again: keep it aside, out
		// of the way of the others.
		if err := os.Rename(r.Path(id), r.Path(id)+refusedExt); err != nil {
			return err
		}
	}
	return nil
}

// refusedExt ends the name of a recording the coordinator refused; it
// stays on the agent's disk for an operator.
const refusedExt = ".refused"

// refused reports whether err is the coordinator's refusal of the
// recording itself (malformed, of another cluster, another under the
// same id, too large), as opposed to an outage or a credential problem.
func refused(err error) bool {
	var e *coordclient.Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Status {
	case http.StatusBadRequest, http.StatusConflict, http.StatusRequestEntityTooLarge:
		return true
	}
	return false
}

func (r *Recorder) shipOne(ctx context.Context, send Sender, id string) error {
	f, err := os.Open(r.Path(id))
	if err != nil {
		return err
	}
	defer f.Close()
	if err := send(ctx, id, f); err != nil {
		return err
	}
	if err := os.Remove(r.Path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove shipped recording: %w", err)
	}
	return nil
}

// Finished returns the ids of the finished recordings not yet shipped,
// oldest first.
func (r *Recorder) Finished() ([]string, error) {
	ents, err := os.ReadDir(r.dir)
	if err != nil {
		return nil, fmt.Errorf("list recordings: %w", err)
	}
	type rec struct {
		id string
		t  time.Time
	}
	var recs []rec
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), Ext)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		recs = append(recs, rec{id, fi.ModTime()})
	}
	slices.SortFunc(recs, func(a, b rec) int { return a.t.Compare(b.t) })
	ids := make([]string, len(recs))
	for i, x := range recs {
		ids[i] = x.id
	}
	return ids, nil
}
