package live

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"strings"

	"github.com/clustral/clustral/proto"
)

// View is a viewer's copy of an agent's live state, built by applying
// the events of its stream in order. During a snapshot it keeps the
// previous state until the snapshot is complete. It is not safe for
// concurrent use.
type View struct {
	// Cursor is where the view stands: pass it to resume.
	Cursor proto.LiveCursor
	// Objects are the objects the viewer holds.
	Objects map[proto.LiveKey]json.RawMessage
	// Synced is set once a snapshot has completed.
	Synced bool

	next map[proto.LiveKey]json.RawMessage // the snapshot being received
}

// Apply applies e. It refuses, with a *SequenceError, an event that would skip or repeat one: a
// change from another epoch or at or before the cursor outside a
// snapshot, or an object twice in one snapshot.
func (v *View) Apply(e proto.LiveEvent) error {
	if v.Objects == nil {
		v.Objects = make(map[proto.LiveKey]json.RawMessage)
	}
	switch e.Type {
	case proto.LivePing:
		return nil
	case proto.LiveSnapshot:
		v.next = make(map[proto.LiveKey]json.RawMessage)
		return nil
	case proto.LiveSynced:
		if v.next != nil {
			v.Objects, v.next = v.next, nil
			v.Synced = true
		} else if e.Epoch != v.Cursor.Epoch || e.Rev < v.Cursor.Rev {
			return sequenceError("synced at %s:%d outside a snapshot, after %s", e.Epoch, e.Rev, v.Cursor)
		}
		v.Cursor = proto.LiveCursor{Epoch: e.Epoch, Rev: e.Rev}
		return nil
	}
	if v.next != nil {
		if _, dup := v.next[e.Key()]; dup || e.Type != proto.LiveUpsert {
			return sequenceError("%s %s twice in one snapshot", e.Type, e.Key())
		}
		v.next[e.Key()] = e.Object
		return nil
	}
	if e.Epoch != v.Cursor.Epoch || e.Rev <= v.Cursor.Rev {
		return sequenceError("%s of %s at %s:%d after %s: out of order", e.Type, e.Key(), e.Epoch, e.Rev, v.Cursor)
	}
	if e.Type == proto.LiveDelete {
		delete(v.Objects, e.Key())
	} else {
		v.Objects[e.Key()] = e.Object
	}
	v.Cursor.Rev = e.Rev
	return nil
}

// Clone returns a copy of the objects held.
func (v *View) Clone() map[proto.LiveKey]json.RawMessage { return maps.Clone(v.Objects) }

// Follow reads one live stream from base (an agent's URL, reached
// through hc) from the cursor since, passing each event to apply, until
// the stream ends, apply fails or ctx is done. It returns apply's error
// as is; call it again, from the cursor of the last event applied, to
// resume.
func Follow(ctx context.Context, hc *http.Client, base string, since proto.LiveCursor, apply func(proto.LiveEvent) error) error {
	u := base + proto.LiveStreamPath
	if since.Epoch != "" {
		u += "?since=" + url.QueryEscape(since.String())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	res, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("live view: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 4<<10))
		return &StatusError{Status: res.StatusCode, Code: proto.ErrorCode(res.Header.Get(proto.HeaderErrorCode)), Message: strings.TrimSpace(string(b))}
	}
	if err := Decode(res.Body, apply); err != nil {
		return err
	}
	return fmt.Errorf("live view: %w", io.ErrUnexpectedEOF)
}

// Decode reads a live stream from r, one proto.LiveEvent a line, passing
// each to apply, until r ends (it then returns nil), a line does not
// parse, or apply fails (it returns apply's error as is).
func Decode(r io.Reader, apply func(proto.LiveEvent) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxEventBytes)
	for sc.Scan() {
		e, err := proto.ParseLiveEvent(sc.Bytes())
		if err != nil {
			return err
		}
		if err := apply(e); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("live view: %w", err)
	}
	return nil
}

// StatusError is an agent's refusal of a live stream.
type StatusError struct {
	Status  int
	Code    proto.ErrorCode
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("live view refused (%d %s): %s", e.Status, e.Code, e.Message)
}

// SequenceError is an event that would skip or repeat a change: a bug at
// one end, never a network failure.
type SequenceError struct{ msg string }

func (e *SequenceError) Error() string { return "live view: " + e.msg }

func sequenceError(format string, args ...any) error {
	return &SequenceError{msg: fmt.Sprintf(format, args...)}
}

// maxEventBytes bounds one line of the stream: the largest object the
// apiserver stores (etcd's default request limit, 1.5 MiB) with room.
const maxEventBytes = 4 << 20
