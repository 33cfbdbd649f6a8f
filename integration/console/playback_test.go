package console

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

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
	tab.Do(t, chromedp.Click(chromedp.CSS("[data-play]")))
	want := "$ echo hi\nhi\n$ cat page\n<script>window.pwned=1</script>\"><img src=x onerror=\"window.pwned=2\">\n$ exit\n"
	// Skip-idle plays the 4.7s pause in 2s.
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
	ctx := context.Background()
	var k proto.Key
	rand.Read(k[:])
	reg, err := harness.RegisterAgent(ctx, http.DefaultClient, m.Coord.URL, m.JoinToken, k, "recorder")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-time.Minute)
	h, _ := json.Marshal(proto.RecordingHeader{Version: 2, Width: 80, Height: 24, Timestamp: start.Unix(),
		Session: proto.RecordingSession{ID: id, User: alice.Email, Cluster: harness.MeshCluster, Namespace: "default", Pod: "web-0",
			Subresource: "exec", Command: []string{"sh"}, TTY: true, Protocol: "v5.channel.k8s.io", Start: start, Correlation: id}})
	var cast bytes.Buffer
	cast.Write(append(h, '\n'))
	for _, ev := range []struct {
		t   float64
		out string
	}{
		{0.1, "\x1b[1;32m$ \x1b[0mecho hi\r\n"},
		{0.3, "hi\r\n"},
		{5.0, "$ cat page\r\n<script>window.pwned=1</script>\"><img src=x onerror=\"window.pwned=2\">\r\n"},
		{5.2, "\x1b]0;title\x07$ exit\r\n"},
	} {
		b, _ := json.Marshal([]any{ev.t, "o", ev.out})
		cast.Write(append(b, '\n'))
	}
	api := coordclient.New(m.Coord.URL, reg.NodeToken, http.DefaultClient)
	if _, err := api.PutRecording(ctx, id, bytes.NewReader(cast.Bytes())); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(cast.Bytes())
	if _, err := api.ShipAudit(ctx, proto.AuditBatch{Source: "spool", Events: []proto.AuditEvent{{
		Code: proto.AuditStreamEnded, Time: time.Now(), Actor: alice.Email, SourceSeq: 1, Correlation: id, Status: 101,
		Resource: &proto.AuditResource{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: "default", Name: "web-0"},
		Metadata: map[string]string{proto.MetaRecording: id, proto.MetaRecordingSHA256: hex.EncodeToString(sum[:]), proto.MetaRecordingStatus: proto.RecordingComplete},
	}}}); err != nil {
		t.Fatal(err)
	}

}
