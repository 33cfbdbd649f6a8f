package console_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

// TestLivePage: the live sessions page shows an agent's reported streams
// with their hostile fields as text, updates by itself as streams open,
// ends one with "End now" (CSRF-checked, audited), shows a sentence when
// the end cannot reach the agent, and has an empty state; the clusters
// page shows the agent's version, health and path.
func TestLivePage(t *testing.T) {
	e := newEnv(t)
	var cl proto.CreateClusterResponse
	e.Do(e.admin.Token, "POST", proto.APIVersion+"/clusters", map[string]any{"name": "lab"}, &cl)
	agent := e.RegisterAgent(cl.JoinToken, "agent-lab")
	e.Connect(agent.NodeToken)
	report := func(streams ...proto.LiveStream) {
		t.Helper()
		e.Do(agent.NodeToken, http.MethodPut, proto.AgentStatusPath, proto.AgentStatus{Version: "v1.2.3", Ready: true,
			Paths: proto.PathCounts{Relayed: 1}, Streams: streams}, nil)
	}
	root, _ := e.signIn("root@example.com")

	report()
	root.get("/admin/live")
	if !strings.Contains(root.page, `id="live-empty"`) {
		t.Errorf("the live page without sessions has no empty state:\n%s", root.page)
	}
	events := root.events("/admin/live/events")
	<-events // the empty list

	hostileExec := proto.LiveStream{ID: "c-exec", Kind: proto.LiveExec, User: hostile[0], Namespace: "default",
		Resource: "pods", Name: hostile[1], Subresource: "exec", Container: hostile[0], Command: []string{"sh", "-c", hostile[0]},
		Path: "/api/v1/namespaces/default/pods/x/exec", Started: time.Now().Add(-time.Minute)}
	watch := proto.LiveStream{ID: "c-watch", Kind: proto.LiveWatch, User: "alice@example.com", Namespace: "default",
		Resource: "pods", Path: "/api/v1/namespaces/default/pods", Started: time.Now()}
	report(hostileExec, watch)
	select {
	case ev := <-events:
		if !strings.Contains(ev, `id="live-c-watch"`) || !strings.Contains(ev, `id="live-c-exec"`) {
			t.Errorf("the live event lacks the new streams:\n%s", ev)
		}
		markupFree(t, "live event", ev)
	case <-time.After(10 * time.Second):
		t.Fatal("the live page's event stream did not send the new streams")
	}
	root.get("/admin/live")
	markupFree(t, "live", root.page)
	if !strings.Contains(root.page, "pods in default") || !strings.Contains(root.page, "on lab, agent agent-lab") {
		t.Errorf("the live page does not say what the watch touches, its agent or cluster:\n%s", root.page)
	}

	// End now: a form from another site is refused, the console's own ends it.
	if status, _, _ := root.post("/admin/live/c-watch/end", url.Values{"csrf": {root.csrf()}}, "https://evil.example", nil); status != http.StatusForbidden {
		t.Errorf("a cross-site end = %d, want 403", status)
	}
	page := root.submit("/admin/live", "/admin/live/c-watch/end", url.Values{})
	if !strings.Contains(page, "The session was ended") || strings.Contains(page, `id="live-c-watch"`) {
		t.Errorf("after End now:\n%s", page)
	}
	ev := e.waitAudit(proto.AuditLiveEnded, "root@example.com")
	if ev.Object != "alice@example.com" || ev.Correlation != "c-watch" || ev.Cluster != "lab" {
		t.Errorf("end event = %+v", ev)
	}
	// Ending one that is gone says so in a sentence.
	root.get("/admin/live")
	status, _, page := root.post("/admin/live/c-watch/end", url.Values{"csrf": {root.csrf()}}, e.URL, nil)
	if status != http.StatusNotFound || !strings.Contains(page, "No live session c-watch") {
		t.Errorf("ending a gone session = %d:\n%s", status, page)
	}

	// The clusters page: version, health, path, last seen, live count.
	root.get("/admin/clusters")
	for _, want := range []string{"v1.2.3", "ready", "relayed", "1 live"} {
		if !strings.Contains(root.page, want) {
			t.Errorf("the clusters page lacks %q:\n%s", want, root.page)
		}
	}
}
