package proto

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"
)

// RecordingPolicy says whether the exec and attach sessions a role allows
// are recorded by the agent (see agent/recording).
type RecordingPolicy string

const (
	// RecordingOff records nothing. The empty policy means the same.
	RecordingOff RecordingPolicy = "off"
	// RecordingBestEffort records the session; if the recording cannot
	// be written the session goes on unrecorded, and its end event says
	// so.
	RecordingBestEffort RecordingPolicy = "best-effort"
	// RecordingRequired fails closed: a session whose recording cannot be
	// started is refused before any byte reaches the pod, and one whose
	// recording stops is ended.
	RecordingRequired RecordingPolicy = "required"
)

// RecordingPolicies lists the policies, weakest first.
var RecordingPolicies = []RecordingPolicy{RecordingOff, RecordingBestEffort, RecordingRequired}

// Validate reports whether p is a known policy (or empty, which is off).
func (p RecordingPolicy) Validate() error {
	switch p {
	case "", RecordingOff, RecordingBestEffort, RecordingRequired:
		return nil
	}
	return fmt.Errorf("recording policy %q is not one of off, best-effort, required", string(p))
}

// Rank orders policies by strength: off (or empty) 0, best-effort 1,
// required 2. A request allowed by several grants is recorded by the
// strongest of their policies.
func (p RecordingPolicy) Rank() int {
	switch p {
	case RecordingBestEffort:
		return 1
	case RecordingRequired:
		return 2
	}
	return 0
}

// RecordingHeader is the first line of a session recording: an asciicast
// v2 header (version 2, terminal width and height, start as Unix seconds)
// with the session it records under "clustral", which asciicast players
// ignore.
type RecordingHeader struct {
	Version   int    `json:"version"`
	Width     int    `json:"width"`
	Height    int    `json:"height"`
	Timestamp int64  `json:"timestamp"`
	Title     string `json:"title,omitempty"`
	// Session names the recorded session.
	Session RecordingSession `json:"clustral"`
}

// RecordingSession names a recorded exec or attach session.
type RecordingSession struct {
	// ID is the session's id: its request's correlation id.
	ID        string `json:"id"`
	User      string `json:"user"`
	KubeUser  string `json:"kube_user,omitempty"`
	Cluster   string `json:"cluster"`
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	Container string `json:"container,omitempty"`
	// Subresource is exec or attach.
	Subresource string   `json:"subresource"`
	Command     []string `json:"command,omitempty"`
	// TTY says whether the client asked for a terminal.
	TTY bool `json:"tty,omitempty"`
	// Protocol is the stream protocol the apiserver chose: a WebSocket
	// subprotocol (v5.channel.k8s.io, ...) or a SPDY one
	// (v4.channel.k8s.io over SPDY/3.1).
	Protocol string    `json:"protocol"`
	Start    time.Time `json:"start"`
	// Correlation and TraceID are those of the session's audit events.
	Correlation string `json:"correlation"`
	TraceID     string `json:"trace_id,omitempty"`
	// Stdin says whether the client's input is recorded ("i" events).
	Stdin bool `json:"stdin"`
	// MaxBytes is the size cap of the recording.
	MaxBytes int64 `json:"max_bytes"`
}

// Metadata keys the end event of a recorded session (RQ004I) carries.
const (
	MetaRecording       = "recording"        // the session id
	MetaRecordingSHA256 = "recording_sha256" // hex SHA-256 of the whole recording file
	MetaRecordingBytes  = "recording_bytes"  // its size
	MetaRecordingStatus = "recording_status" // complete, truncated, failed
)

// Recording statuses (MetaRecordingStatus).
const (
	RecordingComplete  = "complete"
	RecordingTruncated = "truncated" // the size cap was reached, or a stream could not be parsed
	RecordingFailed    = "failed"    // the recording could not be written (best-effort)
)

// RecordingInfo describes a stored recording: GET /api/v1/recordings
// lists them, newest first.
type RecordingInfo struct {
	Session RecordingSession `json:"session"`
	Bytes   int64            `json:"bytes"`
	SHA256  string           `json:"sha256"`
	Stored  time.Time        `json:"stored"`
}

// MaxRecordingUpload bounds the body of PUT /api/v1/recordings/{id}, an
// agent shipping one recording: the largest cap an agent may set.
const MaxRecordingUpload = 1 << 30

// Query parameters of GET /api/v1/recordings.
const (
	RecordingParamUser    = "user"
	RecordingParamCluster = "cluster"
	RecordingParamPod     = "pod"
	RecordingParamSince   = "since" // RFC 3339: sessions that started at or after it
)

// Live recordings: while a recorded session runs, its agent appends what
// it recorded so far with PATCH /api/v1/recordings/{id}?offset=N (the
// body is the recording's bytes from N on), about once a second, and
// ships the whole recording with PUT when the session ends (beyond its
// header, only while someone watches: RecordingAppended.Watched). A reader
// follows a running session with GET /api/v1/recordings/{id}?live=true
// &offset=N, once a second: the answer is the recording's bytes from N on
// and its HeaderRecordingState says whether more may follow.
//
// RecordingParamOffset is the byte offset of a PATCH's body, or where a
// GET's answer starts; RecordingParamLive lets a GET answer with the
// recording of a session still running.
const RecordingParamOffset, RecordingParamLive = "offset", "live"

// HeaderRecordingState is RecordingStateLive (the session is running, or
// its agent has not shipped its end yet: more bytes may follow) or
// RecordingStateStored (the recording is complete and stored; its digest
// is the one its end event carries) on the answer to a GET of a
// recording.
const (
	HeaderRecordingState                     = "X-Clustral-Recording-State"
	RecordingStateLive, RecordingStateStored = "live", "stored"
)

// RecordingAppended answers a PATCH of a live recording.
type RecordingAppended struct {
	// Bytes is how much of the recording the coordinator now holds.
	Bytes int64 `json:"bytes"`
	// Watched says someone read the live recording lately: the agent
	// ships the rest as it comes. Until then it ships the header only
	// and asks again with empty appends, so a session nobody watches
	// costs no second copy of its bytes while it runs.
	Watched bool `json:"watched"`
}

// RecordingWatchWindow is how long after the last read of a live
// recording it counts as watched.
const RecordingWatchWindow = 10 * time.Second

var recordingID = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`) })

// CheckRecordingID reports whether id can name a recording (and its
// file): letters, digits, '.', '_' and '-', up to 128, not starting
// with a dot.
func CheckRecordingID(id string) error {
	if !recordingID().MatchString(id) {
		return fmt.Errorf("recording id %q is not letters, digits, '.', '_' and '-' (up to 128)", id)
	}
	return nil
}

// ParseRecordingHeader decodes the first line of a recording, and checks
// that it is an asciicast v2 header that names a session.
func ParseRecordingHeader(line []byte) (RecordingHeader, error) {
	var h RecordingHeader
	if err := json.Unmarshal(line, &h); err != nil {
		return h, fmt.Errorf("recording header is not JSON: %w", err)
	}
	if h.Version != 2 {
		return h, fmt.Errorf("recording header has version %d, want asciicast version 2", h.Version)
	}
	if h.Session.ID == "" || h.Session.Cluster == "" {
		return h, errors.New("recording header names no session (clustral.id and clustral.cluster)")
	}
	return h, nil
}
