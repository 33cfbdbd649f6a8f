package console

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/clustral/clustral/coordinator/console"
	"github.com/clustral/clustral/coordinator/coordinatortest"
	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

// TestPlayback: a recording an agent shipped, with its end event, plays
// in the administrator's browser: the page says it verifies, Play shows
// the recorded output, escape sequences dropped and hostile markup as
// text, and the audit log's end event links to it.
func TestPlayback(t *testing.T) {
	const id = "play-1"
	m := suite.NewMesh(t)
	shipRecording(t, m, id)

	chrome := startChrome(t)
	tab := chrome.NewTab()
	signIn(t, tab, m.Coord.URL, admin)
	// From the audit log's end event to its playback.
	tab.Do(t,
		chromedp.Navigate(m.Coord.URL+"/admin/audit?q="+id),
		chromedp.WaitVisible(chromedp.CSS("main h1")),
		chromedp.Click(chromedp.CSS(".events summary")),
		chromedp.Click(chromedp.CSS(`a[href="/admin/sessions/`+id+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-cast][data-loaded]`)),
	)
	if v := text(t, tab, "#verification"); !strings.HasPrefix(v, "Verified") {
		t.Errorf("verification = %q", v)
	}
	checkPage(t, tab)
	// Skip-idle plays the 4.7s pause in 2s; the slider seeks.
	for _, tt := range []struct {
		action, clock, screen string
	}{
		{"", "0:00 / 0:02", ""},
		{"document.querySelector('[data-skip-idle]').click()", "0:00 / 0:05", ""},
		{"document.querySelector('[data-skip-idle]').click()", "0:00 / 0:02", ""},
		{"const s = document.querySelector('[data-position]'); s.value = 1; s.dispatchEvent(new Event('input'))", "0:01 / 0:02", "$ echo hi\nhi"},
		{"const s = document.querySelector('[data-position]'); s.value = 0; s.dispatchEvent(new Event('input'))", "0:00 / 0:02", ""},
	} {
		if tt.action != "" {
			if _, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[chromedp.Void]("{"+tt.action+"}")); err != nil {
				t.Fatal(err)
			}
		}
		if c, s := text(t, tab, "[data-clock]"), text(t, tab, "#screen"); c != tt.clock || s != tt.screen {
			t.Errorf("after %q: clock %q, screen %q; want %q, %q", tt.action, c, s, tt.clock, tt.screen)
		}
	}
	tab.Do(t, chromedp.Click(chromedp.CSS("[data-play]")))
	want := "$ echo hi\nhi\n$ cat page\n<script>window.pwned=1</script>\"><img src=x onerror=\"window.pwned=2\">\n$ exit\n"
	if _, err := chromedp.Run(tab.Ctx, chromedp.Poll[bool](`document.getElementById("screen").textContent.includes("$ exit")`,
		chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		t.Fatalf("the recorded output did not play: %v", err)
	}
	if screen := text(t, tab, "#screen"); screen != strings.TrimSpace(want) {
		t.Errorf("screen = %q, want %q", screen, want)
	}
	markup, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[bool](`window.pwned !== undefined || document.querySelector("#screen *") !== null`))
	if err != nil || markup {
		t.Errorf("the recording's markup ran or became elements (%v)", err)
	}
	noProblems(t, tab)
}

// shipRecording stores a recording of the session id on MeshCluster, as
// an agent of m would ship it, with its end event (RQ004I) carrying its
// digest. Its output has colours, a window title, a long pause and
// hostile markup.
func shipRecording(t *testing.T, m *harness.Mesh, id string) {
	t.Helper()
	var k proto.Key
	rand.Read(k[:])
	reg, err := harness.RegisterAgent(context.Background(), http.DefaultClient, m.Coord.URL, m.JoinToken, k, "recorder")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-time.Minute)
	coordinatortest.ShipRecording(t, m.Coord.URL, http.DefaultClient, reg.NodeToken, coordinatortest.Recording{
		Session: proto.RecordingSession{ID: id, User: alice.Email, Cluster: harness.MeshCluster, Namespace: "default", Pod: "web-0",
			Subresource: "exec", Command: []string{"sh"}, TTY: true, Protocol: "v5.channel.k8s.io", Start: start, Correlation: id},
		Output: []coordinatortest.CastOutput{
			{T: 0.1, Data: "\x1b[1;32m$ \x1b[0mecho hi\r\n"},
			{T: 0.3, Data: "hi\r\n"},
			{T: 5.0, Data: "$ cat page\r\n<script>window.pwned=1</script>\"><img src=x onerror=\"window.pwned=2\">\r\n"},
			{T: 5.2, Data: "\x1b]0;title\x07$ exit\r\n"},
		},
		Seq: 1,
	})
}

// TestLivePlayback: a running session's live page shows its output as
// its agent ships it, a chunk at a time (a chunk may end inside a line),
// and, once the whole recording is stored, says the session ended and
// links to the stored recording.
func TestLivePlayback(t *testing.T) {
	const id = "live-1"
	m := suite.NewMesh(t)
	var k proto.Key
	rand.Read(k[:])
	reg, err := harness.RegisterAgent(context.Background(), http.DefaultClient, m.Coord.URL, m.JoinToken, k, "recorder")
	if err != nil {
		t.Fatal(err)
	}
	h, err := json.Marshal(proto.RecordingHeader{Version: 2, Width: 80, Height: 24, Session: proto.RecordingSession{
		ID: id, User: alice.Email, Cluster: harness.MeshCluster, Namespace: "default", Pod: "web-0", Subresource: "exec",
		Command: []string{"sh"}, TTY: true, Protocol: "v5.channel.k8s.io", Start: time.Now(), Correlation: id}})
	if err != nil {
		t.Fatal(err)
	}
	rec := string(h) + "\n" + `[0.1, "o", "\u001b[1;32m$ \u001b[0mecho hi\r\n"]` + "\n" + `[0.3, "o", "hi\r\n"]` + "\n" + `[1.5, "o", "$ exit\r\n"]` + "\n"
	cut := strings.Index(rec, `[0.3`) + 6 // inside the second event
	api := coordclient.New(m.Coord.URL, reg.NodeToken, http.DefaultClient)
	if _, err := api.AppendRecording(context.Background(), id, 0, strings.NewReader(rec[:cut])); err != nil {
		t.Fatal(err)
	}

	chrome := startChrome(t)
	tab := chrome.NewTab()
	signIn(t, tab, m.Coord.URL, admin)
	tab.Do(t, chromedp.Navigate(m.Coord.URL+console.RecordingLivePath(id)), chromedp.WaitVisible(chromedp.CSS("main h1")))
	if v := text(t, tab, "#verification"); !strings.HasPrefix(v, "Live") {
		t.Errorf("verification = %q", v)
	}
	screenHas := func(want string) {
		t.Helper()
		js := `document.getElementById("screen").textContent === ` + strconv.Quote(want)
		if _, err := chromedp.Run(tab.Ctx, chromedp.Poll[bool](js, chromedp.WithPollingTimeout(20*time.Second))); err != nil {
			t.Fatalf("the screen never showed %q (it shows %q): %v", want, text(t, tab, "#screen"), err)
		}
	}
	screenHas("$ echo hi\n")
	if _, err := api.AppendRecording(context.Background(), id, int64(cut), strings.NewReader(rec[cut:])); err != nil {
		t.Fatal(err)
	}
	screenHas("$ echo hi\nhi\n$ exit\n")
	if _, err := api.PutRecording(context.Background(), id, strings.NewReader(rec)); err != nil {
		t.Fatal(err)
	}
	tab.Do(t, chromedp.WaitVisible(chromedp.CSS(`[data-stored] a[href="/admin/sessions/`+id+`"]`)))
	if s := text(t, tab, "[data-player-status]"); !strings.HasPrefix(s, "The session ended") {
		t.Errorf("status after the end = %q", s)
	}
	checkPage(t, tab)
	noProblems(t, tab)
}
