// Package recording records the exec and attach sessions the agent's
// proxy carries, as asciicast v2 files.
//
// The proxy starts a Session before it forwards an exec or attach
// request (so a recording that cannot be written refuses the request
// before any byte reaches the pod), begins it when the apiserver switches
// protocols, and wraps the upstream side of the upgraded connection with
// Conn. Conn parses the bytes as they cross, in both directions: the
// WebSocket channel protocols (v5.channel.k8s.io, v4.channel.k8s.io,
// channel.k8s.io and the base64 forms) or SPDY/3.1 streams. Output
// (stdout and stderr) becomes "o" events, terminal resizes "r" events,
// and stdin "i" events only when the session asks for it. Each event is
// written with write(2) before its bytes go on, so a killed agent keeps
// everything the client was shown. Close syncs the file and returns its
// SHA-256, which the session's end event in the audit log carries.
//
// A recording has a size cap; reaching it writes a marker event ("m")
// saying so, and the rest of the session is not recorded. A stream that
// cannot be parsed is marked the same way. Under the required policy
// both, and any write error, end the session instead: Conn's Read and
// Write fail, which closes the connection.
package recording

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/moby/spdystream/spdy"

	"github.com/clustral/clustral/proto"
)

// DefaultMaxBytes is the default size cap of one recording.
const DefaultMaxBytes = 64 << 20

// Ext is the file name extension of a finished recording; one in
// progress ends in partExt.
const (
	Ext     = ".cast"
	partExt = ".cast.part"
)

// Options configure a Recorder.
type Options struct {
	// Dir is where recordings are written; it is created if missing.
	Dir string
	// MaxBytes caps each recording; zero means DefaultMaxBytes.
	MaxBytes int64
	// Now is the clock of event times; nil means time.Now.
	Now func() time.Time
}

// Recorder writes session recordings to a directory, and ships the
// finished ones (Ship). It is safe for concurrent use and holds no
// resources of its own.
type Recorder struct {
	dir       string
	max       int64
	now       func() time.Time
	notify    chan struct{} // a recording finished
	begun     chan struct{} // a recording began, for ShipLive
	recovered []Recovered

	mu   sync.Mutex
	live map[string]*Session // recordings in progress, for ShipLive
}

// Recovered is a recording that a stopped agent left in progress and New
// finished.
type Recovered struct {
	Result
	// Session is what its header says; empty if the header is torn.
	Session proto.RecordingSession
}

// New returns a Recorder writing to o.Dir.
func New(o Options) (*Recorder, error) {
	if o.Dir == "" {
		return nil, errors.New("session recorder: no directory")
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.MaxBytes < 4*markerReserve {
		return nil, fmt.Errorf("session recorder: a size cap of %d bytes is too small to hold a session; give at least %d", o.MaxBytes, 4*markerReserve)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("session recorder: %w", err)
	}
	// Recordings in progress when the last agent died end here: what
	// they hold is all there will be.
	parts, err := filepath.Glob(filepath.Join(o.Dir, "*"+partExt))
	if err != nil {
		return nil, fmt.Errorf("session recorder: %w", err)
	}
	var recovered []Recovered
	for _, p := range parts {
		final := strings.TrimSuffix(p, partExt) + Ext
		if err := os.Rename(p, final); err != nil {
			return nil, fmt.Errorf("session recorder: finish the recording of a stopped agent: %w", err)
		}
		rec, err := recoveredAt(final)
		if err != nil {
			return nil, fmt.Errorf("session recorder: read the recording of a stopped agent: %w", err)
		}
		recovered = append(recovered, rec)
	}
	return &Recorder{dir: o.Dir, max: o.MaxBytes, now: o.Now, notify: make(chan struct{}, 1), begun: make(chan struct{}, 1), recovered: recovered, live: map[string]*Session{}}, nil
}

// recoveredAt describes the finished recording at path.
func recoveredAt(path string) (Recovered, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Recovered{}, err
	}
	id := strings.TrimSuffix(filepath.Base(path), Ext)
	rec := Recovered{Result: Result{ID: id, Path: path, SHA256: fmt.Sprintf("%x", sha256.Sum256(b)), Bytes: int64(len(b)),
		Status: proto.RecordingTruncated, Err: errors.New("the agent stopped before the session ended")}}
	if line, _, ok := bytes.Cut(b, []byte("\n")); ok {
		if h, err := proto.ParseRecordingHeader(line); err == nil {
			rec.Session = h.Session
		}
	}
	return rec, nil
}

// Recovered returns the recordings New finished for a stopped agent.
func (r *Recorder) Recovered() []Recovered { return r.recovered }

// Dir returns the directory recordings are written to.
func (r *Recorder) Dir() string { return r.dir }

// Path returns the file of the finished recording with the given
// session id, until it is shipped.
func (r *Recorder) Path(id string) string { return filepath.Join(r.dir, id+Ext) }

// Start creates the recording of session m, which must have an ID made
// of letters, digits, '.', '_' and '-'. It fails if the file cannot be
// created; the caller refuses a session whose recording is required. The
// caller must Close or Abort the Session.
func (r *Recorder) Start(m proto.RecordingSession, required bool) (*Session, error) {
	if err := proto.CheckRecordingID(m.ID); err != nil {
		return nil, fmt.Errorf("start recording: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(r.dir, m.ID+partExt), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start recording %s: %w", m.ID, err)
	}
	m.MaxBytes = r.max
	if m.Start.IsZero() {
		m.Start = r.now()
	}
	s := &Session{meta: m, required: required, f: f, now: r.now, r: r}
	r.mu.Lock()
	r.live[m.ID] = s
	r.mu.Unlock()
	return s, nil
}

// Result is what Close reports of a recording.
type Result struct {
	ID     string
	Path   string
	SHA256 string // hex; empty if nothing was written
	Bytes  int64
	// Status is proto.RecordingComplete, RecordingTruncated (the cap, or
	// a stream that could not be parsed) or RecordingFailed (a write
	// failed).
	Status string
	// Err is why the recording is not complete, if it is not.
	Err error
}

// Session is one recording in progress. Begin, Close and Abort must not
// be called concurrently with each other; the Conn of a session may be
// used from one reader and one writer goroutine at once, as
// httputil.ReverseProxy does, also while Close runs.
type Session struct {
	r        *Recorder
	meta     proto.RecordingSession
	required bool
	f        *os.File
	now      func() time.Time

	// dir serializes each direction's parser; Close takes both, so no
	// parser runs after it.
	dir [2]sync.Mutex
	// mu guards what follows; parsers' sinks take it.
	mu        sync.Mutex
	c         *cast
	headerLen int64 // bytes of the header line, once begun
	closed    bool
	stopped   error // why recording stopped (cap, parse error, write error)
	fromPod   streamParser
	toPod     streamParser
	spdy      [2]*spdyParser
}

type streamParser interface {
	Write(b []byte) error
}

// ID returns the session id.
func (s *Session) ID() string { return s.meta.ID }

// Begin writes the header once the apiserver switched protocols: upgrade
// is the Upgrade header of its answer (websocket or SPDY/3.1), protocol
// the chosen subprotocol (Sec-WebSocket-Protocol, or
// X-Stream-Protocol-Version for SPDY).
func (s *Session) Begin(upgrade, protocol string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.meta.Protocol = protocol
	switch {
	case strings.EqualFold(upgrade, "websocket"):
		b64 := strings.HasPrefix(protocol, "base64.") || strings.Contains(protocol, ".base64.")
		s.fromPod = newWSParser(podSink{s}, b64)
		s.toPod = newWSParser(clientSink{s}, b64)
		s.meta.Protocol = protocol + " (websocket)"
	case strings.EqualFold(upgrade, "SPDY/3.1"):
		streams := &spdyStreams{types: map[spdy.StreamId]string{}}
		s.spdy[0] = newSPDYParser(podSink{s}, streams)
		s.spdy[1] = newSPDYParser(clientSink{s}, streams)
		s.fromPod, s.toPod = s.spdy[0], s.spdy[1]
		s.meta.Protocol = protocol + " (SPDY/3.1)"
	default:
		return fmt.Errorf("recording %s: upgrade %q is neither websocket nor SPDY/3.1", s.meta.ID, upgrade)
	}
	s.c = newCast(s.f, s.meta.MaxBytes, s.meta.Start, s.now)
	h := proto.RecordingHeader{Version: 2, Width: 80, Height: 24, Timestamp: s.meta.Start.Unix(),
		Title: fmt.Sprintf("%s %s/%s on %s", s.meta.User, s.meta.Namespace, s.meta.Pod, s.meta.Cluster), Session: s.meta}
	err := s.c.header(h)
	s.headerLen = s.c.n
	select {
	case s.r.begun <- struct{}{}:
	default:
	}
	return err
}

// Conn wraps the upstream side of the upgraded connection: what it reads
// comes from the pod, what is written to it goes to the pod. Each is
// recorded before it is passed on.
func (s *Session) Conn(up io.ReadWriteCloser) io.ReadWriteCloser {
	return &conn{up: up, s: s}
}

type conn struct {
	up io.ReadWriteCloser
	s  *Session
}

func (c *conn) Read(b []byte) (int, error) {
	n, err := c.up.Read(b)
	if n > 0 {
		if rerr := c.s.feed(0, b[:n]); rerr != nil {
			c.up.Close()
			return 0, rerr
		}
	}
	return n, err
}

func (c *conn) Write(b []byte) (int, error) {
	if err := c.s.feed(1, b); err != nil {
		c.up.Close()
		return 0, err
	}
	return c.up.Write(b)
}

func (c *conn) Close() error { return c.up.Close() }

// feed parses bytes of direction d (0 from the pod, 1 to it). It returns
// an error only when the session must end: the recording is required and
// has stopped.
func (s *Session) feed(d int, b []byte) error {
	s.dir[d].Lock()
	defer s.dir[d].Unlock()
	s.mu.Lock()
	p := s.fromPod
	if d == 1 {
		p = s.toPod
	}
	stopped, closed := s.stopped, s.closed
	s.mu.Unlock()
	if closed || p == nil {
		return nil
	}
	if stopped == nil {
		if err := p.Write(b); err != nil {
			s.stop(err)
		}
		s.mu.Lock()
		stopped = s.stopped
		s.mu.Unlock()
	}
	if stopped != nil && s.required {
		return fmt.Errorf("the session was ended because its recording, which its role requires, stopped: %w", stopped)
	}
	return nil
}

// stop records why recording stopped, with a marker event if it can.
func (s *Session) stop(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped != nil {
		return
	}
	s.stopped = err
	if !errors.Is(err, errCapped) && s.c.err == nil {
		s.c.marker("clustral: the session's stream could not be parsed (" + err.Error() + "); the rest of the session was not recorded")
	}
}

// event writes an event for a parser's sink; called on a parser's
// goroutine while its direction's lock is held by feed.
func (s *Session) event(code string, b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.stopped != nil {
		return s.stopped
	}
	return s.c.event(code, b)
}

type podSink struct{ s *Session }

func (k podSink) output(b []byte) error { return k.s.event(codeOutput, b) }
func (k podSink) input([]byte) error    { return nil }
func (k podSink) resize(int, int) error { return nil }

type clientSink struct{ s *Session }

func (k clientSink) output([]byte) error { return nil }
func (k clientSink) input(b []byte) error {
	if !k.s.meta.Stdin {
		return nil
	}
	return k.s.event(codeInput, b)
}
func (k clientSink) resize(w, h int) error {
	return k.s.event(codeResize, fmt.Appendf(nil, "%dx%d", w, h))
}

// Close ends the recording: it stops the parsers, syncs and closes the
// file, gives it its final name for Ship, and reports its digest. The
// file of a session that never began is removed, and reported as failed.
func (s *Session) Close() Result {
	res := s.close()
	if s.c == nil {
		os.Remove(res.Path)
		res.Path = ""
	} else {
		final := s.r.Path(s.meta.ID)
		if err := os.Rename(res.Path, final); err != nil && res.Err == nil {
			res.Status, res.Err = proto.RecordingFailed, fmt.Errorf("finish recording: %w", err)
		} else if err == nil {
			res.Path = final
			select {
			case s.r.notify <- struct{}{}:
			default:
			}
		}
	}
	return res
}

func (s *Session) close() Result {
	s.r.mu.Lock()
	delete(s.r.live, s.meta.ID)
	s.r.mu.Unlock()
	s.dir[0].Lock()
	s.dir[1].Lock()
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.dir[1].Unlock()
	s.dir[0].Unlock()
	for _, p := range s.spdy {
		if p != nil {
			p.Close()
		}
	}
	res := Result{ID: s.meta.ID, Path: s.f.Name(), Status: proto.RecordingComplete}
	err := s.f.Sync()
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	if s.c == nil {
		res.Status, res.Err = proto.RecordingFailed, errors.New("the session never began")
		return res
	}
	res.SHA256, res.Bytes = s.c.sum(), s.c.n
	switch {
	case s.c.err != nil:
		res.Status, res.Err = proto.RecordingFailed, s.c.err
	case err != nil:
		res.Status, res.Err = proto.RecordingFailed, fmt.Errorf("sync recording: %w", err)
	case s.stopped != nil:
		res.Status, res.Err = proto.RecordingTruncated, s.stopped
	}
	return res
}

// Abort removes the recording of a session that did not start (the
// apiserver did not switch protocols).
func (s *Session) Abort() {
	s.close()
	os.Remove(s.f.Name())
}
