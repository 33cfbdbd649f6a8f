package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// LivePrefix is the path prefix of an agent's live cluster view, served
// on its overlay address next to the Kubernetes proxy. kube-apiserver
// never serves a path that starts with a dot, so the prefix cannot hide
// one of its paths.
const LivePrefix = "/.clustral/live/v1/"

// LiveStreamPath is the live stream: GET, optionally with
// ?since=<epoch>:<rev> to resume. The answer is JSON lines, one
// LiveEvent each (Content-Type LiveContentType).
const LiveStreamPath = LivePrefix + "stream"

// LiveContentType is the media type of the live stream.
const LiveContentType = "application/jsonl"

// LiveEventType says what a LiveEvent does to the viewer's state.
type LiveEventType string

const (
	// LiveSnapshot starts a snapshot: the viewer drops its state. The
	// objects follow as LiveUpsert events, then LiveSynced.
	LiveSnapshot LiveEventType = "snapshot"
	// LiveUpsert adds or replaces one object.
	LiveUpsert LiveEventType = "upsert"
	// LiveDelete removes one object.
	LiveDelete LiveEventType = "delete"
	// LiveSynced says the viewer's state now equals the agent's at Rev,
	// as far as the viewer may see it.
	LiveSynced LiveEventType = "synced"
	// LivePing keeps an idle stream open; it changes nothing.
	LivePing LiveEventType = "ping"
)

// LiveEvent is one line of the live stream.
//
// Rev orders the agent's changes: every change to its picture of the
// cluster takes the next revision, and a stream sends changes in
// revision order, skipping those the viewer may not see. A viewer that
// reconnects with since=<Epoch>:<Rev> of the last event it applied gets
// only later changes, or a new snapshot if the agent no longer has them
// (or restarted: a new Epoch).
type LiveEvent struct {
	Type  LiveEventType `json:"type"`
	Epoch string        `json:"epoch"`
	Rev   uint64        `json:"rev"`
	// Kind is the resource of the object, in the agent's naming (e.g.
	// "pods", "deployments.apps"); Namespace is empty for a
	// cluster-scoped object. Set for LiveUpsert and LiveDelete.
	Kind      string `json:"kind,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// Object is the object as the apiserver serves it, without
	// metadata.managedFields. Set for LiveUpsert; LiveDelete carries the
	// last state known.
	Object json.RawMessage `json:"object,omitempty"`
}

// LiveKey names an object in a live view.
type LiveKey struct{ Kind, Namespace, Name string }

func (k LiveKey) String() string {
	if k.Namespace == "" {
		return k.Kind + "/" + k.Name
	}
	return k.Kind + "/" + k.Namespace + "/" + k.Name
}

// Key is the object e names.
func (e LiveEvent) Key() LiveKey { return LiveKey{e.Kind, e.Namespace, e.Name} }

// ParseLiveEvent decodes and checks one line of the live stream. Every
// event names its epoch; an upsert or delete names its object, and an
// upsert carries it as a JSON object.
func ParseLiveEvent(line []byte) (LiveEvent, error) {
	var e LiveEvent
	d := json.NewDecoder(bytes.NewReader(line))
	if err := d.Decode(&e); err != nil {
		return LiveEvent{}, fmt.Errorf("live event: %w", err)
	}
	if d.More() {
		return LiveEvent{}, errors.New("live event: more than one JSON value on the line")
	}
	if e.Epoch == "" {
		return LiveEvent{}, errors.New("live event: no epoch")
	}
	switch e.Type {
	case LiveSnapshot, LiveSynced, LivePing:
		if e.Kind != "" || e.Name != "" || e.Namespace != "" || len(e.Object) > 0 {
			return LiveEvent{}, fmt.Errorf("live event %s: names an object", e.Type)
		}
	case LiveUpsert, LiveDelete:
		if e.Kind == "" || e.Name == "" {
			return LiveEvent{}, fmt.Errorf("live event %s: no kind or name", e.Type)
		}
		if e.Type == LiveUpsert && (len(e.Object) == 0 || e.Object[0] != '{') {
			return LiveEvent{}, fmt.Errorf("live event upsert of %s: object is not a JSON object", e.Key())
		}
	default:
		return LiveEvent{}, fmt.Errorf("live event: unknown type %q", e.Type)
	}
	return e, nil
}

// LiveCursor is where a viewer stands in an agent's stream: the ?since
// parameter, "<epoch>:<rev>".
type LiveCursor struct {
	Epoch string
	Rev   uint64
}

func (c LiveCursor) String() string { return c.Epoch + ":" + strconv.FormatUint(c.Rev, 10) }

// ParseLiveCursor reads "<epoch>:<rev>"; an empty string is the zero
// cursor, which asks for a snapshot.
func ParseLiveCursor(s string) (LiveCursor, error) {
	if s == "" {
		return LiveCursor{}, nil
	}
	epoch, rev, ok := strings.Cut(s, ":")
	if !ok || epoch == "" {
		return LiveCursor{}, fmt.Errorf("live cursor %q: want <epoch>:<rev> from the last event applied, or none for a snapshot", s)
	}
	n, err := strconv.ParseUint(rev, 10, 64)
	if err != nil {
		return LiveCursor{}, fmt.Errorf("live cursor %q: revision is not a number: want <epoch>:<rev> from the last event applied", s)
	}
	return LiveCursor{Epoch: epoch, Rev: n}, nil
}
