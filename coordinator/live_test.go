package coordinator

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// TestLiveSessionsEndNow: an agent's report lists its streams for
// administrators, with the cluster and agent filled in; ending one sends
// its id on the agent's map stream, drops it from the list, and is
// audited; a non-administrator gets 403 for both calls, a device may not
// report, and a bad report is refused whole.
func TestLiveSessionsEndNow(t *testing.T) {
	e := newTestEnv(t)
	m := newRelayMesh(e) // an agent "a" of prod; alice may reach it
	admin := e.login("admin@example.com")
	alice := e.login("alice@example.com")
	am := e.openMap(m.agent.NodeToken)
	am.next() // snapshot

	watch := proto.LiveStream{ID: "c1-1", Kind: proto.LiveWatch, User: "alice@example.com", Device: m.aliceKey,
		Namespace: "default", Resource: "pods", Path: "/api/v1/namespaces/default/pods", Started: time.Unix(100, 0).UTC()}
	execS := proto.LiveStream{ID: "c1-2", Kind: proto.LiveExec, User: "alice@example.com", Device: m.aliceKey,
		Namespace: "default", Resource: "pods", Name: "web-0", Subresource: "exec", Command: []string{"sh"},
		Path: "/api/v1/namespaces/default/pods/web-0/exec", Started: time.Unix(200, 0).UTC()}
	e.must("PUT", proto.AgentStatusPath, m.agent.NodeToken, proto.AgentStatus{Version: "v9.9.9", Ready: true,
		Paths: proto.PathCounts{Direct: 1}, Streams: []proto.LiveStream{execS, watch}}, nil)

	var list proto.LiveSessions
	e.must("GET", proto.LiveSessionsPath, admin.Token, nil, &list)
	if len(list.Streams) != 2 || list.Streams[0].ID != "c1-1" || list.Streams[1].ID != "c1-2" {
		t.Fatalf("live sessions = %+v, want c1-1 then c1-2 (oldest first)", list.Streams)
	}
	if got := list.Streams[0]; got.Cluster != "prod" || got.Agent != m.agent.NodeID || got.AgentHost != "a" {
		t.Errorf("stream's cluster and agent = %q %q %q, want prod %s a", got.Cluster, got.Agent, got.AgentHost, m.agent.NodeID)
	}

	// The clusters page's view of the agent.
	var cl proto.Cluster
	e.must("GET", "/api/v1/clusters/prod", admin.Token, nil, &cl)
	if len(cl.Agents) != 1 {
		t.Fatalf("agents = %+v", cl.Agents)
	}
	if a := cl.Agents[0]; a.Status == nil || a.Status.Version != "v9.9.9" || !a.Status.Ready || a.Streams != 2 ||
		a.Status.Streams != nil || a.LastSeen.IsZero() || a.Reported.IsZero() || !a.Online || a.Status.Paths.Direct != 1 {
		t.Errorf("agent = %+v status %+v", a, a.Status)
	}

	// Refusals.
	tests := []struct {
		name         string
		method, path string
		token        string
		body         any
		status       int
	}{
		{"user lists", "GET", proto.LiveSessionsPath, alice.Token, nil, http.StatusForbidden},
		{"user ends", "POST", proto.LiveSessionsPath + "/c1-1/end", alice.Token, nil, http.StatusForbidden},
		{"device reports", "PUT", proto.AgentStatusPath, m.alice.NodeToken, proto.AgentStatus{}, http.StatusForbidden},
		{"no token", "PUT", proto.AgentStatusPath, "", proto.AgentStatus{}, http.StatusUnauthorized},
		{"stream without id", "PUT", proto.AgentStatusPath, m.agent.NodeToken, proto.AgentStatus{Streams: []proto.LiveStream{{Kind: "watch"}}}, http.StatusBadRequest},
		{"unknown id", "POST", proto.LiveSessionsPath + "/nope/end", admin.Token, nil, http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if status, p := e.call(tt.method, tt.path, tt.token, tt.body, nil); status != tt.status {
				t.Errorf("%s %s = %d %+v, want %d", tt.method, tt.path, status, p, tt.status)
			}
		})
	}
	e.must("GET", proto.LiveSessionsPath, admin.Token, nil, &list)
	if len(list.Streams) != 2 {
		t.Fatalf("a refused report changed the list: %+v", list.Streams)
	}

	var ended proto.EndLiveSession
	e.must("POST", proto.LiveSessionsPath+"/c1-1/end", admin.Token, nil, &ended)
	if !ended.Sent || ended.Stream.ID != "c1-1" || ended.Stream.User != "alice@example.com" {
		t.Errorf("end = %+v", ended)
	}
	if msg := am.next(); !slices.Equal(msg.EndStreams, []string{"c1-1"}) {
		t.Errorf("agent's map message = %+v, want EndStreams [c1-1]", msg)
	}
	e.must("GET", proto.LiveSessionsPath, admin.Token, nil, &list)
	if len(list.Streams) != 1 || list.Streams[0].ID != "c1-2" {
		t.Errorf("after the end, live sessions = %+v, want c1-2 alone", list.Streams)
	}
	if n := e.auditCodes(admin.Token)[proto.AuditLiveEnded]; n != 1 {
		t.Errorf("%s events = %d, want 1", proto.AuditLiveEnded, n)
	}

	// An agent without its map stream here cannot be told.
	am.body.Close()
	testkit.WaitFor(t, "the agent's map stream to close", func() bool {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		return e.srv.clients[m.agent.NodeID] == nil
	})
	if status, p := e.call("POST", proto.LiveSessionsPath+"/c1-2/end", admin.Token, nil, nil); status != http.StatusServiceUnavailable {
		t.Errorf("end with the agent's stream closed = %d %+v, want 503", status, p)
	}
}
