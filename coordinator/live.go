package coordinator

import (
	"cmp"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/clustral/clustral/proto"
)

// Live sessions. Each agent reports the long-lived requests open through
// it (PUT proto.AgentStatusPath): on change, coalesced, and in full every
// proto.AgentStatusInterval. Each report replaces the last, so a
// coordinator that restarted, or a replica the agent moved to, has the
// whole picture again within an interval. Reports live in memory only,
// on the replica the agent reports to; one older than liveStale is left
// out. An administrator ends a stream (POST .../{id}/end): the
// coordinator names it in proto.MapMessage.EndStreams on the agent's map
// stream, which must be open on this replica, and the agent closes it.

// liveStale is how old an agent's last report may be before its streams
// are left out: it missed three reports.
const liveStale = 3 * proto.AgentStatusInterval

// agentReport is an agent's last status and when it came in.
type agentReport struct {
	status proto.AgentStatus
	at     time.Time
}

// liveTable holds the agents' last reports by node id. Its own lock,
// taken after s.mu when both are held.
type liveTable struct {
	mu      sync.Mutex
	reports map[string]*agentReport
}

func (t *liveTable) put(nodeID string, st proto.AgentStatus, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.reports == nil {
		t.reports = map[string]*agentReport{}
	}
	t.reports[nodeID] = &agentReport{status: st, at: at}
}

// get returns a copy of the report of nodeID, if any.
func (t *liveTable) get(nodeID string) (agentReport, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.reports[nodeID]
	if r == nil {
		return agentReport{}, false
	}
	return *r, true
}

// all returns a copy of every report.
func (t *liveTable) all() map[string]agentReport {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]agentReport, len(t.reports))
	for id, r := range t.reports {
		out[id] = *r
	}
	return out
}

// drop removes stream id from the report of nodeID, so that lists show
// it gone before the agent's next report confirms it.
func (t *liveTable) drop(nodeID, id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if r := t.reports[nodeID]; r != nil {
		r.status.Streams = slices.DeleteFunc(slices.Clone(r.status.Streams), func(s proto.LiveStream) bool { return s.ID == id })
	}
}

// forget drops the report of a node that is gone.
func (t *liveTable) forget(nodeID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.reports, nodeID)
}

// handleAgentStatus takes an agent's report (PUT proto.AgentStatusPath).
func (s *Server) handleAgentStatus(w http.ResponseWriter, r *http.Request, n *node) {
	var st proto.AgentStatus
	if !decode(w, r, &st) {
		return
	}
	if err := st.Validate(); err != nil {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "bad agent status", err.Error())
		return
	}
	for i := range st.Streams {
		// Set by the coordinator only.
		st.Streams[i].Cluster, st.Streams[i].Agent, st.Streams[i].AgentHost = "", "", ""
	}
	now := s.now()
	s.mu.Lock()
	if s.nodes[n.ID] == nil {
		s.mu.Unlock()
		s.live.forget(n.ID)
		writeProblem(w, http.StatusUnauthorized, proto.CodeUnauthenticated, "node is no longer registered", "register again")
		return
	}
	n.LastSeen = now
	s.mu.Unlock()
	s.live.put(n.ID, st, now)
	w.WriteHeader(http.StatusNoContent)
}

// liveSessions returns every fresh report's streams, with their cluster
// and agent, oldest first, and the agents whose report is stale.
func (s *Server) liveSessions() proto.LiveSessions {
	reports := s.live.all()
	now := s.now()
	out := proto.LiveSessions{Streams: []proto.LiveStream{}}
	s.mu.Lock()
	for id, rep := range reports {
		n := s.nodes[id]
		if n == nil {
			continue
		}
		if now.Sub(rep.at) > liveStale {
			out.Stale = append(out.Stale, id)
			continue
		}
		clusterName := ""
		if c := s.clusters[n.ClusterID]; c != nil {
			clusterName = c.Name
		}
		for _, ls := range rep.status.Streams {
			ls.Cluster, ls.Agent, ls.AgentHost = clusterName, n.ID, n.Hostname
			out.Streams = append(out.Streams, ls)
		}
	}
	s.mu.Unlock()
	slices.Sort(out.Stale)
	slices.SortFunc(out.Streams, func(a, b proto.LiveStream) int {
		return cmp.Or(a.Started.Compare(b.Started), strings.Compare(a.ID, b.ID))
	})
	return out
}

func (s *Server) handleLiveSessions(w http.ResponseWriter, r *http.Request, _ principal) {
	writeJSON(w, http.StatusOK, s.liveSessions())
}

// handleEndLive ends one live session (POST
// proto.LiveSessionsPath/{id}/end): the agent's map stream carries the
// order, and the agent closes the stream at once.
func (s *Server) handleEndLive(w http.ResponseWriter, r *http.Request, p principal) {
	id := r.PathValue("id")
	var found *proto.LiveStream
	for _, ls := range s.liveSessions().Streams {
		if ls.ID == id {
			found = &ls
			break
		}
	}
	if found == nil {
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, "no live session "+id,
			"it has ended, or its agent has not reported it: list the live sessions again (clustral sessions live)")
		return
	}
	s.mu.Lock()
	c := s.clients[found.Agent]
	s.mu.Unlock()
	if c == nil || !c.endStream(id) {
		writeProblem(w, http.StatusServiceUnavailable, proto.CodeUpstreamUnavailable, "the agent of this session is not connected here",
			"its map stream is not open on this coordinator (it is reconnecting, or streams from another replica): try again in a moment")
		return
	}
	s.live.drop(found.Agent, id)
	s.audit(proto.AuditEvent{Code: proto.AuditLiveEnded, Actor: p.user.Login, Object: found.User, Cluster: found.Cluster,
		Outcome: proto.OutcomeSuccess, Correlation: id, Metadata: map[string]string{
			"kind": found.Kind, "cluster": found.Cluster, "agent": found.Agent, "namespace": found.Namespace,
			"name": found.Name, "path": found.Path}})
	s.log.Info("live session ended", "by", p.user.Login, "user", found.User, "cluster", found.Cluster, "kind", found.Kind, "correlation", id)
	writeJSON(w, http.StatusOK, proto.EndLiveSession{Stream: *found, Sent: true})
}
