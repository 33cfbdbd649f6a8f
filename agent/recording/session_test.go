package recording

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

// upstream is the apiserver's side of an upgraded connection: Read
// returns the pod's bytes in the pieces given, Write collects what the
// client sends.
type upstream struct {
	reads  [][]byte
	wrote  bytes.Buffer
	closed bool
}

func (u *upstream) Read(b []byte) (int, error) {
	if len(u.reads) == 0 {
		return 0, io.EOF
	}
	n := copy(b, u.reads[0])
	if u.reads[0] = u.reads[0][n:]; len(u.reads[0]) == 0 {
		u.reads = u.reads[1:]
	}
	return n, nil
}

func (u *upstream) Write(b []byte) (int, error) { return u.wrote.Write(b) }
func (u *upstream) Close() error                { u.closed = true; return nil }

// clock advances by a millisecond on every reading.
func clock() func() time.Time {
	t := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return func() time.Time { t = t.Add(time.Millisecond); return t }
}

func newRecorder(t *testing.T, max int64) *Recorder {
	t.Helper()
	r, err := New(Options{Dir: filepath.Join(t.TempDir(), "rec"), MaxBytes: max, Now: clock()})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func meta(id string, stdin bool) proto.RecordingSession {
	return proto.RecordingSession{ID: id, User: "alice", Cluster: "prod", Namespace: "default", Pod: "web-0",
		Container: "app", Subresource: "exec", Command: []string{"sh"}, TTY: true, Correlation: id, Stdin: stdin}
}

// replay runs a session: the client's bytes are written, then the pod's
// are read, through the session's Conn. It returns the error of the
// first Read or Write that failed.
func replay(s *Session, client [][]byte, pod [][]byte) (*upstream, error) {
	up := &upstream{reads: slices.Clone(pod)}
	c := s.Conn(up)
	for _, b := range client {
		if _, err := c.Write(b); err != nil {
			return up, err
		}
	}
	buf := make([]byte, 5)
	for {
		_, err := c.Read(buf)
		if errors.Is(err, io.EOF) {
			return up, nil
		}
		if err != nil {
			return up, err
		}
	}
}

// readCast parses a recording: its header and its events as "code:data".
func readCast(t *testing.T, path string) (proto.RecordingHeader, []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var h proto.RecordingHeader
	if !sc.Scan() {
		t.Fatal("empty recording")
	}
	if err := json.Unmarshal(sc.Bytes(), &h); err != nil {
		t.Fatalf("header %q: %v", sc.Text(), err)
	}
	var evs []string
	last := -1.0
	for sc.Scan() {
		var ev [3]any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("event %q: %v", sc.Text(), err)
		}
		at := ev[0].(float64)
		if at < last {
			t.Fatalf("event %q goes back in time", sc.Text())
		}
		last = at
		evs = append(evs, ev[1].(string)+":"+ev[2].(string))
	}
	return h, evs
}

func TestSessionRecords(t *testing.T) {
	wsClient := [][]byte{wsMessage(4, `{"Width":132,"Height":43}`, mask), wsMessage(0, "echo hi\r", mask)}
	wsPod := [][]byte{wsMessage(1, "$ echo hi\r\nhi\r\n", nil), wsMessage(2, "warn: \xe2\x82", nil), wsMessage(2, "\xac\n", nil)}
	spdyClient := [][]byte{spdyFrames(t, synStream(1, "error"), synStream(3, "stdin"), synStream(5, "stdout"), synStream(7, "resize"),
		data(7, `{"Width":132,"Height":43}`+"\n"), data(3, "echo hi\r"))}
	spdyPod := [][]byte{spdyFrames(t, data(5, "$ echo hi\r\nhi\r\n"), data(5, "warn: €\n"))}
	output := []string{"o:$ echo hi\r\nhi\r\nwarn: €\n"}
	tests := []struct {
		name           string
		upgrade, proto string
		stdin          bool
		client, pod    [][]byte
		want           []string
	}{
		{name: "websocket", upgrade: "websocket", proto: "v5.channel.k8s.io", client: wsClient, pod: wsPod,
			want: append([]string{"r:132x43"}, output...)},
		{name: "websocket with stdin", upgrade: "websocket", proto: "v5.channel.k8s.io", stdin: true, client: wsClient, pod: wsPod,
			want: append([]string{"r:132x43", "i:echo hi\r"}, output...)},
		{name: "spdy", upgrade: "SPDY/3.1", proto: "v4.channel.k8s.io", client: spdyClient, pod: spdyPod,
			want: append([]string{"r:132x43"}, output...)},
		{name: "spdy with stdin", upgrade: "SPDY/3.1", proto: "v4.channel.k8s.io", stdin: true, client: spdyClient, pod: spdyPod,
			want: append([]string{"r:132x43", "i:echo hi\r"}, output...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRecorder(t, 0)
			s, err := r.Start(meta("abc-1", tt.stdin), true)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Begin(tt.upgrade, tt.proto); err != nil {
				t.Fatal(err)
			}
			up, err := replay(s, tt.client, tt.pod)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(up.wrote.Bytes(), bytes.Join(tt.client, nil)) {
				t.Error("the client's bytes did not reach the pod unchanged")
			}
			res := s.Close()
			if res.Status != proto.RecordingComplete || res.Err != nil {
				t.Fatalf("result %+v", res)
			}
			b, err := os.ReadFile(r.Path("abc-1"))
			if err != nil {
				t.Fatal(err)
			}
			if sum := fmt.Sprintf("%x", sha256.Sum256(b)); res.SHA256 != sum || res.Bytes != int64(len(b)) {
				t.Errorf("result digest %s (%d bytes), file %s (%d bytes)", res.SHA256, res.Bytes, sum, len(b))
			}
			h, evs := readCast(t, res.Path)
			evs = merged(evs)
			if h.Version != 2 || h.Session.User != "alice" || h.Session.Pod != "web-0" || h.Session.Stdin != tt.stdin ||
				!strings.HasPrefix(h.Session.Protocol, tt.proto) || h.Session.MaxBytes != DefaultMaxBytes {
				t.Errorf("header %+v", h)
			}
			if fmt.Sprint(evs) != fmt.Sprint(tt.want) {
				t.Errorf("events %q, want %q", evs, tt.want)
			}
		})
	}
}

// merged joins consecutive output or input events: a read or write
// through the proxy may cut them anywhere.
func merged(evs []string) []string {
	e := events{got: evs}
	return e.merged()
}

func TestSessionStops(t *testing.T) {
	long := strings.Repeat("z", 600)
	capMarker := "m:clustral: the recording reached its cap of 1024 bytes; the rest of the session was not recorded"
	tests := []struct {
		name       string
		required   bool
		pod        [][]byte
		wantErr    bool
		wantStatus string
		wantLast   string
	}{
		{name: "cap, best effort", pod: [][]byte{wsMessage(1, long, nil), wsMessage(1, long, nil), wsMessage(1, "after", nil)},
			wantStatus: proto.RecordingTruncated, wantLast: capMarker},
		{name: "cap, required", required: true, pod: [][]byte{wsMessage(1, long, nil), wsMessage(1, long, nil)},
			wantErr: true, wantStatus: proto.RecordingTruncated, wantLast: capMarker},
		{name: "unparsable, best effort", pod: [][]byte{wsMessage(1, "ok", nil), {0xf2, 0}, wsMessage(1, "lost", nil)},
			wantStatus: proto.RecordingTruncated, wantLast: "m:clustral: the session's stream could not be parsed (websocket stream: frame with reserved bits set (no extension is negotiated)); the rest of the session was not recorded"},
		{name: "unparsable, required", required: true, pod: [][]byte{wsMessage(1, "ok", nil), {0xf2, 0}},
			wantErr: true, wantStatus: proto.RecordingTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := begun(t, newRecorder(t, 1024), "cap-1", tt.required, "websocket", "v4.channel.k8s.io")
			up, err := replay(s, nil, tt.pod)
			if (err != nil) != tt.wantErr {
				t.Fatalf("session error %v, want one: %v", err, tt.wantErr)
			}
			if tt.wantErr && (!up.closed || !strings.Contains(err.Error(), "the session was ended because its recording")) {
				t.Errorf("required session not ended: closed %v, err %v", up.closed, err)
			}
			res := s.Close()
			if res.Status != tt.wantStatus {
				t.Errorf("status %s, want %s (%v)", res.Status, tt.wantStatus, res.Err)
			}
			if fi, err := os.Stat(res.Path); err != nil || fi.Size() > 1024 {
				t.Errorf("recording over its cap: %v, %v", fi.Size(), err)
			}
			_, evs := readCast(t, res.Path)
			if tt.wantLast != "" && evs[len(evs)-1] != tt.wantLast {
				t.Errorf("last event %q, want %q", evs[len(evs)-1], tt.wantLast)
			}
		})
	}
}

// begun starts and begins the recording of session id.
func begun(t *testing.T, r *Recorder, id string, required bool, upgrade, protocol string) *Session {
	t.Helper()
	s, err := r.Start(meta(id, false), required)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Begin(upgrade, protocol); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSessionWriteFailure(t *testing.T) {
	for _, required := range []bool{false, true} {
		s := begun(t, newRecorder(t, 0), "fail-1", required, "websocket", "v5.channel.k8s.io")
		s.f.Close() // every later write fails, as on a disk gone bad
		_, err := replay(s, nil, [][]byte{wsMessage(1, "x", nil)})
		if (err != nil) != required {
			t.Errorf("required %v: session error %v", required, err)
		}
		if res := s.Close(); res.Status != proto.RecordingFailed || res.Err == nil {
			t.Errorf("required %v: result %+v", required, res)
		}
	}
}

func TestStartFails(t *testing.T) {
	r := newRecorder(t, 0)
	if _, err := r.Start(meta("../x", false), true); err == nil || !strings.Contains(err.Error(), "is not letters, digits") {
		t.Errorf("path id: %v", err)
	}
	s, err := r.Start(meta("dup", false), true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Abort()
	if _, err := r.Start(meta("dup", false), true); err == nil {
		t.Error("a second recording of one session id was started")
	}
	// The directory is gone and a file is in its place.
	if err := os.RemoveAll(r.Dir()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.Dir(), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Start(meta("x", false), true); err == nil {
		t.Error("started a recording in a directory that is a file")
	}
	if _, err := New(Options{Dir: t.TempDir(), MaxBytes: 100}); err == nil {
		t.Error("a 100 byte cap was accepted")
	}
}

func TestAbortRemoves(t *testing.T) {
	r := newRecorder(t, 0)
	s, err := r.Start(meta("gone", false), false)
	if err != nil {
		t.Fatal(err)
	}
	s.Abort()
	if _, err := os.Stat(r.Path("gone")); !os.IsNotExist(err) {
		t.Errorf("aborted recording still there: %v", err)
	}
}

func TestSpdyGoroutinesEnd(t *testing.T) {
	s := begun(t, newRecorder(t, 0), "g", false, "SPDY/3.1", "v4.channel.k8s.io")
	// A frame cut in the middle when the session ends.
	b := spdyFrames(t, synStream(1, "stdout"), data(1, "partial"))
	if _, err := replay(s, [][]byte{b[:len(b)-3]}, nil); err != nil {
		t.Fatal(err)
	}
	if res := s.Close(); res.Status != proto.RecordingComplete {
		t.Fatalf("result %+v", res)
	}
}
