package console_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/console"
	"github.com/clustral/clustral/coordinator/coordinatortest"
	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

// shipRecording stores a recording of session id on cluster "lab" in
// the pod web-0, as its agent would, with an end event that carries
// digest (see coordinatortest.Recording), and returns the recording.
func (e *env) shipRecording(agent proto.RegisterResponse, id, user, command, output, digest string, seq uint64) []byte {
	e.t.Helper()
	s := proto.RecordingSession{ID: id, User: user, Cluster: "lab", Namespace: "default", Pod: "web-0", Container: command,
		Subresource: "exec", Command: []string{"sh", "-c", command}, Protocol: "v5.channel.k8s.io", Start: time.Now(), Correlation: id, TraceID: "trace-" + id}
	return coordinatortest.ShipRecording(e.t, e.URL, e.Client(), agent.NodeToken,
		coordinatortest.Recording{Session: s, Output: []coordinatortest.CastOutput{{T: 0.25, Data: output}}, Digest: digest, Seq: seq})
}

// TestRecordingPages: the sessions page lists and filters recordings;
// each playback page shows its header as text and whether its stored
// bytes match the digest of its end event; the player's source and the
// download are the stored bytes; the audit log's end event links to the
// playback page.
func TestRecordingPages(t *testing.T) {
	e := newEnv(t)
	var cl proto.CreateClusterResponse
	e.Do(e.admin.Token, "POST", proto.APIVersion+"/clusters", map[string]any{"name": "lab"}, &cl)
	agent := e.RegisterAgent(cl.JoinToken, "agent-lab")
	hostileOut := "$ cat x\r\n" + hostile[0] + hostile[1] + "\r\n"
	good := e.shipRecording(agent, "s-good", "alice@example.com", hostile[0], hostileOut, "", 1)
	e.shipRecording(agent, "s-edited", "bob@example.com", "ls", "ls\r\n", strings.Repeat("0", 64), 2)
	e.shipRecording(agent, "s-open", "bob@example.com", "ls", "ls\r\n", coordinatortest.NoEndEvent, 0)
	e.waitAudit(proto.AuditStreamEnded, "bob@example.com")

	b, _ := e.signIn("root@example.com")
	for _, tt := range []struct {
		query  string
		status int
		want   []string
		absent []string
	}{
		{"", 200, []string{"s-good", "s-edited", "s-open"}, nil},
		{"?user=bob@example.com", 200, []string{"s-edited", "s-open"}, []string{"s-good"}},
		{"?cluster=prod", 200, []string{"No recorded session matches"}, []string{"s-good"}},
		{"?pod=web-0&since=1h", 200, []string{"s-good", "s-open"}, nil},
		{"?since=1d", 200, []string{"s-good"}, nil},
		{"?since=" + time.Now().Add(time.Hour).UTC().Format(time.RFC3339), 200, []string{"No recorded session matches"}, nil},
		{"?since=yesterday", 400, []string{"Since &#34;yesterday&#34; is neither a duration ago"}, nil},
	} {
		t.Run("list"+tt.query, func(t *testing.T) {
			resp, _ := b.get("/admin/sessions" + tt.query)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d:\n%s", resp.StatusCode, tt.status, b.page)
			}
			for _, w := range tt.want {
				if strings.HasPrefix(w, "s-") {
					w = `href="/admin/sessions/` + w + `"`
				}
				if !strings.Contains(b.page, w) {
					t.Errorf("page lacks %s:\n%s", w, b.page)
				}
			}
			for _, a := range tt.absent {
				if strings.Contains(b.page, `href="/admin/sessions/`+a+`"`) {
					t.Errorf("page links %s:\n%s", a, b.page)
				}
			}
		})
	}
	b.get("/admin/sessions")
	markupFree(t, "sessions page", b.page)

	for _, tt := range []struct {
		id, want string
	}{
		{"s-good", "Verified: the stored recording's SHA-256 matches the digest in its end event RQ004I"},
		{"s-edited", "Edited: the stored recording's SHA-256 does not match"},
		{"s-open", "Not vouched for: no end event in the audit log carries this recording's digest"},
	} {
		t.Run("play "+tt.id, func(t *testing.T) {
			if resp, _ := b.get("/admin/sessions/" + tt.id); resp.StatusCode != 200 || !strings.Contains(b.page, tt.want) {
				t.Fatalf("status %d, want 200 saying %q:\n%s", resp.StatusCode, tt.want, b.page)
			}
			for _, w := range []string{`data-cast="/admin/sessions/` + tt.id + `/cast"`, `href="/admin/sessions/` + tt.id + `/cast?download=1"`,
				"<dd>default/web-0</dd>", "trace-" + tt.id, "<dt>Correlation</dt><dd><code>" + tt.id} {
				if !strings.Contains(b.page, w) {
					t.Errorf("page lacks %s", w)
				}
			}
		})
	}
	// The header's hostile command and container are text.
	b.get("/admin/sessions/s-good")
	markupFree(t, "playback page", b.page)

	// The player reads the stored bytes; they are never a page.
	for _, tt := range []struct {
		query, disposition string
	}{{"", ""}, {"?download=1", `attachment; filename="s-good.cast"`}} {
		resp, _ := b.get("/admin/sessions/s-good/cast" + tt.query)
		if resp.StatusCode != 200 || b.page != string(good) || resp.Header.Get("Content-Type") != "application/x-asciicast" ||
			resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Content-Disposition") != tt.disposition {
			t.Errorf("cast%s = %d %v:\n%s", tt.query, resp.StatusCode, resp.Header, b.page)
		}
	}
	for _, p := range []string{"/admin/sessions/s-none", "/admin/sessions/s-none/cast"} {
		if resp, _ := b.get(p); resp.StatusCode != http.StatusNotFound || !strings.Contains(b.page, "No recording s-none") {
			t.Errorf("%s = %d, want 404 with a sentence:\n%s", p, resp.StatusCode, b.page)
		}
	}

	// The end event's detail in the audit log links to the playback.
	b.get("/admin/audit?q=s-good")
	if !strings.Contains(b.page, `<a href="/admin/sessions/s-good">Play recorded session s-good</a>`) {
		t.Errorf("audit detail does not link the playback:\n%s", b.page)
	}
	b.get("/admin/audit?user=root@example.com")
	if strings.Contains(b.page, "Play recorded session") {
		t.Errorf("an event without a recording links a playback:\n%s", b.page)
	}
}

// TestRecordingLivePage: a running session's live page follows it (the
// player's source answers from an offset and says the session is live),
// and once the whole recording is stored the source says so and the live
// page leads to the playback page.
func TestRecordingLivePage(t *testing.T) {
	e := newEnv(t)
	var cl proto.CreateClusterResponse
	e.Do(e.admin.Token, "POST", proto.APIVersion+"/clusters", map[string]any{"name": "lab"}, &cl)
	agent := e.RegisterAgent(cl.JoinToken, "agent-lab")
	h, err := json.Marshal(proto.RecordingHeader{Version: 2, Width: 80, Height: 24, Session: proto.RecordingSession{
		ID: "s-live", User: "alice@example.com", Cluster: "lab", Namespace: "default", Pod: "web-0", Subresource: "exec",
		Command: []string{"sh"}, Start: time.Now(), Correlation: "s-live"}})
	if err != nil {
		t.Fatal(err)
	}
	first := string(h) + "\n" + `[0.1, "o", "$ "]` + "\n"
	rest := `[0.5, "o", "ls\r\n"]` + "\n"
	api := coordclient.New(e.URL, agent.NodeToken, e.Client())
	if _, err := api.AppendRecording(context.Background(), "s-live", 0, strings.NewReader(first)); err != nil {
		t.Fatal(err)
	}

	b, _ := e.signIn("root@example.com")
	if got := console.RecordingLivePath("s-live"); got != "/admin/sessions/s-live/live" {
		t.Fatalf("RecordingLivePath = %s", got)
	}
	resp, _ := b.get("/admin/sessions/s-live/live")
	for _, w := range []string{"Live: this session is running", `data-follow="/admin/sessions/s-live/cast?live=1"`, "<dd>default/web-0</dd>"} {
		if resp.StatusCode != 200 || !strings.Contains(b.page, w) {
			t.Errorf("live page = %d, lacks %s:\n%s", resp.StatusCode, w, b.page)
		}
	}
	if strings.Contains(b.page, "download=1") {
		t.Errorf("the live page offers a download of a recording in progress")
	}
	cast := func(offset int, wantState, want string) {
		t.Helper()
		resp, _ := b.get("/admin/sessions/s-live/cast?live=1&offset=" + strconv.Itoa(offset))
		if resp.StatusCode != 200 || b.page != want || resp.Header.Get(proto.HeaderRecordingState) != wantState {
			t.Errorf("cast from %d = %d %s %q, want %s %q", offset, resp.StatusCode, resp.Header.Get(proto.HeaderRecordingState), b.page, wantState, want)
		}
	}
	cast(0, proto.RecordingStateLive, first)
	cast(len(first), proto.RecordingStateLive, "")
	if _, err := api.AppendRecording(context.Background(), "s-live", int64(len(first)), strings.NewReader(rest)); err != nil {
		t.Fatal(err)
	}
	cast(len(first), proto.RecordingStateLive, rest)
	if resp, _ := b.get("/admin/sessions/s-live/cast?live=1&offset=x"); resp.StatusCode != 400 {
		t.Errorf("a bad offset = %d", resp.StatusCode)
	}
	if resp, _ := b.get("/admin/sessions/s-none/live"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("the live page of no session = %d, want 404", resp.StatusCode)
	}

	// The session ends: its whole recording is stored.
	if _, err := api.PutRecording(context.Background(), "s-live", strings.NewReader(first+rest)); err != nil {
		t.Fatal(err)
	}
	cast(len(first)+len(rest), proto.RecordingStateStored, "")
	if _, hops := b.get("/admin/sessions/s-live/live"); len(hops) != 2 || hops[1].Request.URL.Path != "/admin/sessions/s-live" {
		t.Errorf("the live page of an ended session does not lead to its playback: %d hops", len(hops))
	}
}
