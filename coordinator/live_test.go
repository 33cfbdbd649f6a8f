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

	// The user is the device owner's login, whatever the agent says.
	watch := proto.LiveStream{ID: "c1-1", Kind: proto.LiveWatch, User: "mallory@example.com", Device: m.aliceKey,
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
	if got := list.Streams[0]; got.Cluster != "prod" || got.Agent != m.agent.NodeID || got.AgentHost != "a" || got.User != "alice@example.com" {
		t.Errorf("stream's cluster, agent and user = %q %q %q %q, want prod %s a alice@example.com", got.Cluster, got.Agent, got.AgentHost, got.User, m.agent.NodeID)
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
	// The agent ended it and reports without it.
	e.must("PUT", proto.AgentStatusPath, m.agent.NodeToken, proto.AgentStatus{Version: "v9.9.9", Ready: true, Streams: []proto.LiveStream{execS}}, nil)
	if n := e.auditCodes(admin.Token)[proto.AuditLiveEnded]; n != 1 {
		t.Errorf("%s events = %d, want 1", proto.AuditLiveEnded, n)
	}

	// An agent whose map stream is closed gets the end when it opens
	// again.
	am.body.Close()
	testkit.WaitFor(t, "the agent's map stream to close", func() bool {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		return e.srv.clients[m.agent.NodeID] == nil
	})
	e.must("POST", proto.LiveSessionsPath+"/c1-2/end", admin.Token, nil, &ended)
	if ended.Sent {
		t.Errorf("end with the agent's stream closed = %+v, want Sent false", ended)
	}
	am = e.openMap(m.agent.NodeToken)
	am.next() // snapshot
	if msg := am.next(); !slices.Equal(msg.EndStreams, []string{"c1-2"}) {
		t.Errorf("the reopened stream's message = %+v, want EndStreams [c1-2]", msg)
	}
	// The agent's next report without the stream settles it: no end is
	// sent again.
	e.must("PUT", proto.AgentStatusPath, m.agent.NodeToken, proto.AgentStatus{Version: "v9.9.9", Ready: true, Streams: []proto.LiveStream{}}, nil)
	if r, _ := e.srv.live.get(m.agent.NodeID); len(r.Ends) != 0 {
		t.Errorf("ends after a report without them = %v", r.Ends)
	}
}

// TestLiveSessionsAcrossReplicas: an agent streams from and reports to
// one replica; an administrator on another lists its sessions and ends
// one, and the agent's map stream on the first carries the end.
func TestLiveSessionsAcrossReplicas(t *testing.T) {
	envs := newReplicaEnvs(t, 2)
	a, b := envs[0], envs[1]
	admin := a.login("admin@example.com")
	cl := a.createCluster(admin.Token, "prod")
	var agent proto.RegisterResponse
	a.must("POST", "/api/v1/agents", cl.JoinToken, proto.RegisterAgentRequest{PublicKey: newKey(t), Hostname: "a", CSR: newCSR(t)}, &agent)
	am := a.openMap(agent.NodeToken)
	am.next()
	a.must("PUT", proto.AgentStatusPath, agent.NodeToken, proto.AgentStatus{Version: "v1", Ready: true, Streams: []proto.LiveStream{
		{ID: "c-1", Kind: proto.LiveWatch, User: "alice@example.com", Resource: "pods", Path: "/api/v1/pods", Started: time.Unix(1, 0).UTC()}}}, nil)

	var list proto.LiveSessions
	testkit.WaitFor(t, "the other replica to list the agent's session", func() bool {
		list = proto.LiveSessions{}
		b.must("GET", proto.LiveSessionsPath, admin.Token, nil, &list)
		return len(list.Streams) == 1
	})
	if got := list.Streams[0]; got.ID != "c-1" || got.Cluster != "prod" || got.AgentHost != "a" {
		t.Errorf("the other replica lists %+v", got)
	}
	var ended proto.EndLiveSession
	b.must("POST", proto.LiveSessionsPath+"/c-1/end", admin.Token, nil, &ended)
	if ended.Sent {
		t.Errorf("the replica without the agent's stream says it sent the end: %+v", ended)
	}
	if msg := am.next(); !slices.Equal(msg.EndStreams, []string{"c-1"}) {
		t.Errorf("the agent's map message = %+v, want EndStreams [c-1]", msg)
	}
	a.must("GET", proto.LiveSessionsPath, admin.Token, nil, &list)
	if len(list.Streams) != 0 {
		t.Errorf("after the end, the agent's replica lists %+v", list.Streams)
	}
}

// TestEndLiveSessionReachesEveryAgentReportingIt: an agent that reports
// another agent's session id cannot shield that session: ending the id
// tells both agents.
func TestEndLiveSessionReachesEveryAgentReportingIt(t *testing.T) {
	e := newTestEnv(t)
	m := newRelayMesh(e) // an agent "a" of prod
	admin := e.login("admin@example.com")
	staging := e.createCluster(admin.Token, "staging")
	var other proto.RegisterResponse
	e.must("POST", "/api/v1/agents", staging.JoinToken, proto.RegisterAgentRequest{PublicKey: newKey(t), Hostname: "b", CSR: newCSR(t)}, &other)
	streams := map[string]*mapStream{}
	for _, tok := range []string{m.agent.NodeToken, other.NodeToken} {
		ms := e.openMap(tok)
		ms.next()
		streams[tok] = ms
		e.must("PUT", proto.AgentStatusPath, tok, proto.AgentStatus{Streams: []proto.LiveStream{
			{ID: "same", Kind: proto.LiveWatch, User: "alice@example.com", Path: "/api/v1/pods", Started: time.Unix(1, 0).UTC()}}}, nil)
	}
	e.must("POST", proto.LiveSessionsPath+"/same/end", admin.Token, nil, nil)
	for tok, ms := range streams {
		if msg := ms.next(); !slices.Equal(msg.EndStreams, []string{"same"}) {
			t.Errorf("agent %s... got %+v, want EndStreams [same]", tok[:8], msg)
		}
	}
	if n := e.auditCodes(admin.Token)[proto.AuditLiveEnded]; n != 2 {
		t.Errorf("%s events = %d, want one per agent", proto.AuditLiveEnded, n)
	}
}
