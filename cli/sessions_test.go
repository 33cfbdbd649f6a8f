package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/clustral/clustral/coordinator"
	"github.com/clustral/clustral/coordinator/coordinatortest"
	"github.com/clustral/clustral/coordinator/recordings"
	"github.com/clustral/clustral/proto"
)

// sessionCast is a recording of session id, by user, as an agent writes it.
func sessionCast(t testing.TB, id, user, pod string, start time.Time, events ...string) []byte {
	t.Helper()
	h, err := json.Marshal(proto.RecordingHeader{Version: 2, Width: 80, Height: 24, Timestamp: start.Unix(), Title: user + " default/" + pod + " on prod",
		Session: proto.RecordingSession{ID: id, User: user, Cluster: "prod", Namespace: "default", Pod: pod, Container: "app", Subresource: "exec",
			Command: []string{"sh"}, TTY: true, Protocol: "v5.channel.k8s.io (websocket)", Start: start, Correlation: id, MaxBytes: 64 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	return []byte(string(h) + "\n" + strings.Join(events, "\n") + "\n")
}

var playEvents = []string{`[0.500000, "r", "120x40"]`, `[1.000000, "o", "$ "]`, `[4.000000, "o", "whoami\r\nroot\r\n"]`,
	`[4.250000, "m", "clustral: the recording reached its cap of 1024 bytes; the rest of the session was not recorded"]`}

// TestGoldenSessions runs the sessions commands against a real
// coordinator in-process that holds two recordings.
func TestGoldenSessions(t *testing.T) {
	slept := stubPlaySleep(t)
	tests := []goldenCase{
		{name: "sessions-ls", args: []string{"sessions", "ls"}, sent: []string{"GET /api/v1/recordings"}},
		{name: "sessions-ls-filtered", args: []string{"sessions", "ls", "--user", "alice@example.com", "--pod", "web-0", "--cluster", "prod", "--since", "1d"},
			sent: []string{"GET /api/v1/recordings ?cluster=prod&pod=web-0&since=2030-01-01T10%3A00%3A00Z&user=alice%40example.com"}},
		{name: "sessions-export", args: []string{"sessions", "export", "s-1"}, plain: true, sent: []string{"GET /api/v1/recordings/s-1"}},
		{name: "sessions-play", args: []string{"sessions", "play", "s-1", "--speed", "2"}, plain: true},
		{name: "sessions-play-missing", args: []string{"sessions", "play", "s-404"}, plain: true, code: 1},
		{name: "sessions-play-bad-speed", args: []string{"sessions", "play", "s-1", "--speed", "0"}, plain: true, code: 2},
		// A session that ended plays at once, without pauses.
		{name: "sessions-play-follow", args: []string{"sessions", "play", "--follow", "s-1"}, plain: true,
			sent: []string{"GET /api/v1/recordings/s-1 ?live=true"}},
		{name: "sessions-play-follow-missing", args: []string{"sessions", "play", "-f", "s-404"}, plain: true, code: 1},
		{name: "sessions-play-follow-speed", args: []string{"sessions", "play", "-f", "s-1", "--speed", "2"}, plain: true, code: 2},
	}
	runGolden(t, tests, func(t *testing.T, _ goldenCase) *testEnv {
		dir, err := recordings.NewDir(t.TempDir(), func() time.Time { return fixedNow })
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range [][]byte{
			sessionCast(t, "s-1", "alice@example.com", "web-0", fixedNow.Add(-2*time.Hour), playEvents...),
			sessionCast(t, "s-2", "bob@example.com", "db-0", fixedNow.Add(-time.Hour), `[0.1, "o", "x"]`),
		} {
			var h proto.RecordingHeader
			json.Unmarshal(bytes.SplitN(b, []byte("\n"), 2)[0], &h)
			if _, err := dir.Put(h.Session.ID, bytes.NewReader(b)); err != nil {
				t.Fatal(err)
			}
		}
		e := newRealEnv(t, func(c *coordinator.Config) { c.Recordings = dir })
		e.useSession(e.real.Login("admin@example.com"))
		return e
	})
	// --speed 2 halves the pauses (a resize pauses too).
	if want := []time.Duration{250 * time.Millisecond, 250 * time.Millisecond, 1500 * time.Millisecond, 125 * time.Millisecond}; !slices.Equal(*slept, want) {
		t.Errorf("play waited %v, want %v", *slept, want)
	}
}

// stubPlaySleep makes play record its waits instead of waiting.
func stubPlaySleep(t testing.TB) *[]time.Duration {
	var slept []time.Duration
	old := playAfter
	playAfter = func(d time.Duration) <-chan time.Time {
		slept = append(slept, d)
		c := make(chan time.Time, 1)
		c <- time.Time{}
		return c
	}
	t.Cleanup(func() { playAfter = old })
	return &slept
}

func TestPlay(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name      string
		cast      []byte
		speed     float64
		maxIdle   time.Duration
		out, errs string
		waits     []time.Duration
		err       string
	}{
		{name: "real time, no cap", cast: sessionCast(t, "a", "u", "p", start, playEvents...), speed: 1,
			out: "$ whoami\r\nroot\r\n", errs: "\n[clustral: the recording reached its cap of 1024 bytes; the rest of the session was not recorded at 4.2s]\n",
			waits: []time.Duration{500 * time.Millisecond, 500 * time.Millisecond, 3 * time.Second, 250 * time.Millisecond}},
		{name: "capped idle", cast: sessionCast(t, "a", "u", "p", start, playEvents...), speed: 1, maxIdle: time.Second,
			out: "$ whoami\r\nroot\r\n", errs: "\n[clustral: the recording reached its cap of 1024 bytes; the rest of the session was not recorded at 4.2s]\n",
			waits: []time.Duration{500 * time.Millisecond, 500 * time.Millisecond, time.Second, 250 * time.Millisecond}},
		{name: "time going back waits nothing", cast: sessionCast(t, "a", "u", "p", start, `[2, "o", "a"]`, `[1, "o", "b"]`), speed: 1,
			out: "ab", waits: []time.Duration{2 * time.Second}},
		{name: "empty", cast: nil, err: "the recording is empty"},
		{name: "not a recording", cast: []byte("hello\n"), err: "not a clustral recording"},
		{name: "bad event", cast: sessionCast(t, "a", "u", "p", start, `[1, "o", "a"]`, `{"x": 1}`), out: "a", waits: []time.Duration{time.Second},
			err: "recording line 3: not an event [time, code, data]"},
		{name: "negative time", cast: sessionCast(t, "a", "u", "p", start, `[-1, "o", "a"]`), err: "recording line 2: event time is not a non-negative number"},
		{name: "torn last line of a killed agent", cast: append(sessionCast(t, "a", "u", "p", start, `[1, "o", "a"]`), `[2, "o", "b`...),
			out: "a", waits: []time.Duration{time.Second}, err: "recording line 3: not an event"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			slept := stubPlaySleep(t)
			var out, errs bytes.Buffer
			speed := tt.speed
			if speed == 0 {
				speed = 1
			}
			err := play(context.Background(), bytes.NewReader(tt.cast), &out, &errs, speed, tt.maxIdle, nil)
			if fmt.Sprint(err) != fmt.Sprint(nil) && (tt.err == "" || !strings.Contains(err.Error(), tt.err)) || err == nil && tt.err != "" {
				t.Fatalf("play = %v, want %q", err, tt.err)
			}
			if out.String() != tt.out || errs.String() != tt.errs || !slices.Equal(*slept, tt.waits) {
				t.Errorf("out %q, stderr %q, waits %v; want %q, %q, %v", out.String(), errs.String(), *slept, tt.out, tt.errs, tt.waits)
			}
		})
	}
}

// FuzzPlay: a recording comes from an agent through the coordinator.
// play must take any bytes without panicking, and write only what the
// output events hold.
func FuzzPlay(f *testing.F) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Add(sessionCast(f, "a", "u", "p", start, playEvents...))
	f.Add(sessionCast(f, "a", "u", "p", start, `[1e308, "o", "x"]`, `[0.1, "i", "y"]`))
	f.Add([]byte("{\"version\":2}\n[1, \"o\"]\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		old := playAfter
		playAfter = func(time.Duration) <-chan time.Time { c := make(chan time.Time, 1); c <- time.Time{}; return c }
		defer func() { playAfter = old }()
		var out bytes.Buffer
		play(context.Background(), bytes.NewReader(b), &out, io.Discard, 1, time.Second, nil)
		if out.Len() > len(b)*4 {
			t.Fatalf("wrote %d bytes from a %d byte recording", out.Len(), len(b))
		}
	})
}

// TestVerifyNamesEditedRecording: a recording that fails verification is
// named as such, not as a break in the chain.
func TestVerifyNamesEditedRecording(t *testing.T) {
	for _, tt := range []struct {
		v    proto.AuditVerification
		want string
	}{
		{proto.AuditVerification{OK: true, Checked: 3, First: 1, Last: 3, Recordings: 2},
			"Audit log intact: 3 records, 1 to 3.\nSession recordings intact: 2 checked against their end events.\n"},
		{proto.AuditVerification{OK: true, Checked: 3, First: 1, Last: 3, Recordings: 1, Unvouched: 22, UnvouchedIDs: []string{"s-3", "s-4"}},
			"Audit log intact: 3 records, 1 to 3.\nSession recordings intact: 1 checked against their end events.\n" +
				"Session recordings NOT vouched for: 22, with no end event in the log (not shipped yet, or pruned): s-3, s-4 and 20 more.\n"},
		{proto.AuditVerification{Checked: 3, First: 1, Last: 3, Recordings: 2, BadSeq: 2, BadRecording: "s-2",
			Problem: "recording s-2 was edited: its content does not match the digest in its session's end event (record 2)"},
			"Session recording s-2 EDITED: recording s-2 was edited: its content does not match the digest in its session's end event (record 2)\n" +
				"The audit log itself is intact: 3 records, 1 to 3; 2 recordings checked.\n"},
	} {
		var b bytes.Buffer
		if err := render(&b, "table", tt.v, func(tw *tabwriter.Writer) { verificationTable(tw, tt.v) }); err != nil {
			t.Fatal(err)
		}
		if b.String() != tt.want {
			t.Errorf("got\n%s\nwant\n%s", b.String(), tt.want)
		}
	}
}

// TestPlayKeys: on a terminal, . skips a pause, space holds the replay
// until it is pressed again, q stops it.
func TestPlayKeys(t *testing.T) {
	never := func(time.Duration) <-chan time.Time { return nil } // only keys end a pause
	old := playAfter
	playAfter = never
	t.Cleanup(func() { playAfter = old })
	cast := sessionCast(t, "a", "u", "p", time.Now(), `[1, "o", "one "]`, `[2, "o", "two "]`, `[3, "o", "three "]`, `[4, "o", "four"]`)
	for _, tt := range []struct {
		name string
		keys string
		out  string
		err  error
	}{
		{"skip every pause", "....", "one two three four", nil},
		{"pause and resume", ". x .  .", "one two three four", nil},
		{"quit", "..q", "one two ", errQuit},
		{"ctrl-c while paused", ". \x03", "one ", errQuit},
	} {
		t.Run(tt.name, func(t *testing.T) {
			keys := make(chan byte, len(tt.keys))
			for i := range len(tt.keys) {
				keys <- tt.keys[i]
			}
			close(keys)
			var out bytes.Buffer
			err := play(context.Background(), bytes.NewReader(cast), &out, io.Discard, 1, 0, keys)
			if !errors.Is(err, tt.err) || out.String() != tt.out {
				t.Errorf("play = %q, %v; want %q, %v", out.String(), err, tt.out, tt.err)
			}
		})
	}
}

// TestGoldenLiveSessions lists the live sessions an agent of prod
// reported, and ends one.
func TestGoldenLiveSessions(t *testing.T) {
	tests := []goldenCase{
		{name: "sessions-live", args: []string{"sessions", "live"}, sent: []string{"GET /api/v1/live-sessions"}},
		{name: "sessions-end", args: []string{"sessions", "end", "c-watch"}, sent: []string{"POST /api/v1/live-sessions/c-watch/end"}},
		{name: "sessions-end-gone", args: []string{"sessions", "end", "c-gone"}, plain: true, code: 1},
	}
	runGolden(t, tests, func(t *testing.T, _ goldenCase) *testEnv {
		e := newRealEnv(t, func(c *coordinator.Config) {
			c.NewID = coordinatortest.IDs("cls_00112233445566778899", "agt_0011223344556677889a")
			c.AddrRand = coordinatortest.Addrs(1)
		})
		admin := e.real.Login("admin@example.com")
		var cl proto.CreateClusterResponse
		e.real.Do(admin.Token, "POST", proto.APIVersion+"/clusters", proto.CreateClusterRequest{Name: "prod"}, &cl)
		agent := e.real.RegisterAgent(cl.JoinToken, "agent-prod")
		e.real.Connect(agent.NodeToken)
		dev := proto.Key{1, 2, 3}
		e.real.Do(agent.NodeToken, "PUT", proto.AgentStatusPath, proto.AgentStatus{Version: "v1.2.3", Ready: true, Streams: []proto.LiveStream{
			{ID: "c-watch", Kind: proto.LiveWatch, User: "alice@example.com", Device: dev, Namespace: "default", Resource: "pods",
				Path: "/api/v1/namespaces/default/pods", Started: fixedNow.Add(-time.Hour)},
			{ID: "c-exec", Kind: proto.LiveExec, User: "bob@example.com", Device: dev, Namespace: "default", Resource: "pods", Name: "web-0",
				Subresource: "exec", Container: "app", Command: []string{"sh", "-c", "top"}, Path: "/api/v1/namespaces/default/pods/web-0/exec",
				Started: fixedNow.Add(-time.Minute)},
		}}, nil)
		e.useSession(admin)
		return e
	})
}
