package agent

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clustral/clustral/agent/recording"
	"github.com/clustral/clustral/agent/recording/recordingtest"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// fakePod is an apiserver that switches protocols for exec and attach,
// naming the chosen subprotocol as the real one does, waits for the
// client's first bytes, answers with output, and reads until the client
// closes.
type fakePod struct {
	t        testing.TB
	output   []byte
	requests atomic.Int32
	// extensions is the Sec-WebSocket-Extensions of the last request.
	extensions atomic.Value
}

func (f *fakePod) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.requests.Add(1)
	f.extensions.Store(r.Header.Get("Sec-WebSocket-Extensions"))
	up := r.Header.Get("Upgrade")
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		f.t.Errorf("hijack: %v", err)
		return
	}
	defer conn.Close()
	chosen := "Sec-WebSocket-Protocol: v5.channel.k8s.io"
	if strings.EqualFold(up, "SPDY/3.1") {
		chosen = "X-Stream-Protocol-Version: v4.channel.k8s.io"
	}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + up + "\r\n" + chosen + "\r\n\r\n")
	brw.Flush()
	buf := make([]byte, 4096)
	if _, err := brw.Read(buf); err != nil {
		return
	}
	conn.Write(f.output)
	io.Copy(io.Discard, brw)
}

// wsMsg is one WebSocket message on a channel; a client's is masked.
func wsMsg(client bool, channel byte, data string) []byte {
	if client {
		return recordingtest.WSMessage(channel, data, recordingtest.ClientMask)
	}
	return recordingtest.WSMessage(channel, data, nil)
}

func recordingGrant(policy proto.RecordingPolicy, stdin bool) proto.RoleGrant {
	g := grant("shell", "developers")
	g.Recording, g.RecordStdin = policy, stdin
	return g
}

// newRecordingHarness is a proxy with a recorder in dir in front of pod,
// whose user alice holds g (and the view role, which records nothing).
func newRecordingHarness(t *testing.T, pod http.Handler, dir string, max int64, g proto.RoleGrant) (*harness, <-chan proto.AuditEvent) {
	t.Helper()
	rec, err := recording.New(recording.Options{Dir: dir, MaxBytes: max})
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan proto.AuditEvent, 16)
	h := newHarness(t, pod, func(c *ProxyConfig) {
		c.Recorder = rec
		c.Audit = func(e proto.AuditEvent) { events <- e }
	})
	h.peers.set(loopback, device(1, "alice@example.com", g, grant("view", "viewers")))
	return h, events
}

func TestRecordSession(t *testing.T) {
	wsClient := append(wsMsg(true, 4, `{"Width":100,"Height":30}`), wsMsg(true, 0, "echo hi\r")...)
	wsPod := append(wsMsg(false, 1, "echo hi\r\nhi\r\n"), wsMsg(false, 2, "done\r\n")...)
	spdyClient := recordingtest.SPDYFrames(t, recordingtest.SynStream(1, "error"), recordingtest.SynStream(3, "stdin"), recordingtest.SynStream(5, "stdout"), recordingtest.SynStream(7, "resize"),
		recordingtest.Data(7, `{"Width":100,"Height":30}`+"\n"), recordingtest.Data(3, "echo hi\r"))
	spdyPod := recordingtest.SPDYFrames(t, recordingtest.Data(5, "echo hi\r\nhi\r\n"), recordingtest.Data(5, "done\r\n"))
	tests := []struct {
		upgrade     string
		stdin       bool
		client, pod []byte
	}{
		{"websocket", false, wsClient, wsPod},
		{"websocket", true, wsClient, wsPod},
		{"SPDY/3.1", false, spdyClient, spdyPod},
		{"SPDY/3.1", true, spdyClient, spdyPod},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s stdin %v", tt.upgrade, tt.stdin), func(t *testing.T) {
			dir := t.TempDir()
			pod := &fakePod{t: t, output: tt.pod}
			h, events := newRecordingHarness(t, pod, dir, 0, recordingGrant(proto.RecordingRequired, tt.stdin))
			c := h.dial()
			resp := c.do(t, "POST", "/api/v1/namespaces/default/pods/web-0/exec?command=sh&container=app&stdin=true&stdout=true&tty=true",
				"Connection: Upgrade\r\nUpgrade: "+tt.upgrade+"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n")
			if resp.StatusCode != http.StatusSwitchingProtocols {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("upgrade = %d %q", resp.StatusCode, b)
			}
			start := testkit.Recv(t, events, "the stream start event")
			if live, _ := h.proxy.LiveStreams(); len(live) != 1 || live[0].Kind != proto.LiveExec || live[0].Recording != start.Correlation {
				t.Errorf("live streams = %+v, want the exec naming its recording %s", live, start.Correlation)
			}
			if ext := pod.extensions.Load(); ext != "" {
				t.Errorf("the apiserver was offered WebSocket extensions %q; a recorded stream must have none", ext)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(tt.client); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(tt.pod))
			if _, err := io.ReadFull(c.br, got); err != nil || !bytes.Equal(got, tt.pod) {
				t.Fatalf("client read %q, %v; want the pod's bytes unchanged", got, err)
			}
			c.Close()
			end := testkit.Recv(t, events, "the stream end event")

			id := start.Metadata[proto.MetaRecording]
			if id == "" || id != start.Correlation || end.Metadata[proto.MetaRecording] != id ||
				end.Metadata[proto.MetaRecordingStatus] != proto.RecordingComplete {
				t.Fatalf("start %+v, end %+v: want both to name a complete recording", start.Metadata, end.Metadata)
			}
			b, err := os.ReadFile(filepath.Join(dir, id+recording.Ext))
			if err != nil {
				t.Fatal(err)
			}
			if sum := fmt.Sprintf("%x", sha256.Sum256(b)); end.Metadata[proto.MetaRecordingSHA256] != sum || end.Metadata[proto.MetaRecordingBytes] != fmt.Sprint(len(b)) {
				t.Errorf("end event names %s (%s bytes), the file is %s (%d bytes)",
					end.Metadata[proto.MetaRecordingSHA256], end.Metadata[proto.MetaRecordingBytes], sum, len(b))
			}
			cast := string(b)
			for _, want := range []string{`"user":"alice@example.com"`, `"cluster":"prod"`, `"namespace":"default"`, `"pod":"web-0"`,
				`"container":"app"`, `"command":["sh"]`, `"tty":true`, `"correlation":"` + id + `"`, `"trace_id":"` + end.TraceID + `"`,
				`, "r", "100x30"]`, `, "o", "echo hi\r\nhi\r\n"]`, `, "o", "done\r\n"]`} {
				if !strings.Contains(cast, want) {
					t.Errorf("recording lacks %s:\n%s", want, cast)
				}
			}
			if hasStdin := strings.Contains(cast, `, "i", "echo hi\r"]`); hasStdin != tt.stdin {
				t.Errorf("stdin recorded: %v, want %v:\n%s", hasStdin, tt.stdin, cast)
			}
		})
	}
}

// TestRecordingRequiredFailsClosed: a required recording that cannot be
// written refuses the exec before it reaches the apiserver; a best-effort
// one lets it through and says so in the end event.
func TestRecordingRequiredFailsClosed(t *testing.T) {
	for _, policy := range []proto.RecordingPolicy{proto.RecordingRequired, proto.RecordingBestEffort} {
		t.Run(string(policy), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "rec")
			pod := &fakePod{t: t, output: wsMsg(false, 1, "x")}
			h, events := newRecordingHarness(t, pod, dir, 0, recordingGrant(policy, false))
			// The directory is gone, a file in its place: nothing can be created.
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dir, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			c := h.dial()
			resp := c.do(t, "GET", "/api/v1/namespaces/default/pods/web-0/exec?command=sh", "Connection: Upgrade\r\nUpgrade: websocket\r\n")
			if policy == proto.RecordingBestEffort {
				if resp.StatusCode != http.StatusSwitchingProtocols {
					t.Fatalf("best-effort exec = %d, want it through", resp.StatusCode)
				}
				testkit.Recv(t, events, "the stream start event")
				c.Close()
				end := testkit.Recv(t, events, "the stream end event")
				if end.Metadata[proto.MetaRecordingStatus] != proto.RecordingFailed {
					t.Fatalf("end event %+v, want recording_status failed", end.Metadata)
				}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(proto.HeaderErrorCode) != string(proto.CodeRecordingUnavailable) ||
				!strings.Contains(string(b), "requires that this exec session be recorded, and the agent cannot record it") {
				t.Fatalf("required exec = %d %q", resp.StatusCode, b)
			}
			if n := pod.requests.Load(); n != 0 {
				t.Fatalf("the apiserver saw %d requests; the refusal must come first", n)
			}
			if e := testkit.Recv(t, events, "the denial event"); e.Code != proto.AuditProxyDenied || e.Error != proto.CodeRecordingUnavailable {
				t.Fatalf("event %+v", e)
			}
		})
	}
}

// TestRecordingRequiredEndsSession: a required recording that stops (here
// at its size cap) ends the session; the client is not sent what was not
// recorded.
func TestRecordingRequiredEndsSession(t *testing.T) {
	big := strings.Repeat("y", 120)
	var out []byte
	for range 20 {
		out = append(out, wsMsg(false, 1, big)...)
	}
	h, events := newRecordingHarness(t, &fakePod{t: t, output: out}, t.TempDir(), 1024, recordingGrant(proto.RecordingRequired, false))
	c := h.dial()
	resp := c.do(t, "GET", "/api/v1/namespaces/default/pods/web-0/attach?container=app", "Connection: Upgrade\r\nUpgrade: websocket\r\n")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("attach = %d", resp.StatusCode)
	}
	testkit.Recv(t, events, "the stream start event")
	c.Write(wsMsg(true, 0, "x"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c.br)
	if len(got) >= len(out) {
		t.Fatalf("client got all %d bytes; the session should have ended at the cap", len(got))
	}
	end := testkit.Recv(t, events, "the stream end event")
	if end.Metadata[proto.MetaRecordingStatus] != proto.RecordingTruncated {
		t.Fatalf("end event %+v, want recording_status truncated", end.Metadata)
	}
}

// TestRecordingPolicyOfGrants: the strongest policy of the grants that
// allow a request applies, and stdin only from a grant that records.
func TestRecordingPolicyOfGrants(t *testing.T) {
	off := grant("a", "g1")
	best := recordingGrant(proto.RecordingBestEffort, false)
	req := recordingGrant(proto.RecordingRequired, false)
	stdinOff := grant("b", "g2")
	stdinOff.RecordStdin = true // ignored: the grant does not record
	stdinBest := recordingGrant(proto.RecordingBestEffort, true)
	tests := []struct {
		grants    []proto.RoleGrant
		policy    proto.RecordingPolicy
		wantStdin bool
	}{
		{[]proto.RoleGrant{off}, "", false},
		{[]proto.RoleGrant{off, best}, proto.RecordingBestEffort, false},
		{[]proto.RoleGrant{best, req, off}, proto.RecordingRequired, false},
		{[]proto.RoleGrant{stdinOff, req}, proto.RecordingRequired, false},
		{[]proto.RoleGrant{stdinBest, req}, proto.RecordingRequired, true},
	}
	for i, tt := range tests {
		r, _ := http.NewRequest("POST", "https://x/api/v1/namespaces/default/pods/p/exec", nil)
		imp, d := authorize("prod", device(1, "alice@example.com", tt.grants...), parseRequestInfo(r), t0)
		if d != nil {
			t.Fatalf("%d: %v", i, d)
		}
		if imp.recording != tt.policy || imp.recordStdin != tt.wantStdin {
			t.Errorf("%d: policy %q stdin %v, want %q %v", i, imp.recording, imp.recordStdin, tt.policy, tt.wantStdin)
		}
	}
}

// TestRescuedEvent: the event of a recording a stopped agent left vouches
// for it as the session's end event would have.
func TestRescuedEvent(t *testing.T) {
	rec := recording.Recovered{
		Result: recording.Result{ID: "abc-7", SHA256: "00ff", Bytes: 1234, Status: proto.RecordingTruncated},
		Session: proto.RecordingSession{ID: "abc-7", User: "alice@example.com", Cluster: "prod", Namespace: "default", Pod: "web-0",
			Subresource: "exec", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736"},
	}
	e := rescuedEvent(rec, t0)
	if e.Code != proto.AuditRecordingRescued || e.Actor != "alice@example.com" || e.Cluster != "prod" || e.Correlation != "abc-7" ||
		e.TraceID != rec.Session.TraceID || e.Resource.Subresource != "exec" || e.Resource.Name != "web-0" ||
		e.Metadata[proto.MetaRecording] != "abc-7" || e.Metadata[proto.MetaRecordingSHA256] != "00ff" ||
		e.Metadata[proto.MetaRecordingBytes] != "1234" || e.Metadata[proto.MetaRecordingStatus] != proto.RecordingTruncated {
		t.Errorf("event %+v %+v", e, e.Resource)
	}
	if e := rescuedEvent(recording.Recovered{Result: recording.Result{ID: "torn"}}, t0); e.Actor != "unknown" {
		t.Errorf("a recording with a torn header: actor %q", e.Actor)
	}
}
