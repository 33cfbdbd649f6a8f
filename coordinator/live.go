package coordinator

import (
	"cmp"
	"errors"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// Live sessions. Each agent reports the long-lived requests open through
// it (PUT proto.AgentStatusPath): on change, coalesced, and in full every
// proto.AgentStatusInterval. Each report replaces the last, so a
// coordinator that restarted, or a replica the agent moved to, has the
// whole picture again within an interval; a report older than
// proto.LiveStaleAfter is left out. An administrator ends a stream (POST
// .../{id}/end): the coordinator names it in proto.MapMessage.EndStreams
// on the agent's map stream, at once if the stream is open here, else
// when it opens.
//
// On a shared store (replicas) the reports and the ends are also kept in
// the store (bucket Live, one record per agent), and every replica
// mirrors them (applyLiveLocked): so every replica lists every agent's
// sessions, and the replica that holds an agent's map stream sends the
// ends another replica stored. On bbolt memory is the only copy.

// agentReport is an agent's last status, when it came in, and the ids of
// its sessions administrators ended that it still reported open.
type agentReport struct {
	Status proto.AgentStatus `json:"status"`
	At     time.Time         `json:"at"`
	Ends   []string          `json:"ends,omitempty"`
}

// withStatus returns r with st reported at at: ends that st no longer
// lists are done and dropped.
func (r agentReport) withStatus(st proto.AgentStatus, at time.Time) agentReport {
	var ends []string
	for _, id := range r.Ends {
		if slices.ContainsFunc(st.Streams, func(ls proto.LiveStream) bool { return ls.ID == id }) {
			ends = append(ends, id)
		}
	}
	return agentReport{Status: st, At: at, Ends: ends}
}

// withEnd returns r with stream id ended: out of its list, into its ends.
func (r agentReport) withEnd(id string) agentReport {
	r.Status.Streams = slices.DeleteFunc(slices.Clone(r.Status.Streams), func(ls proto.LiveStream) bool { return ls.ID == id })
	if !slices.Contains(r.Ends, id) {
		r.Ends = append(slices.Clone(r.Ends), id)
	}
	return r
}

// liveTable holds the agents' last reports by node id. Its own lock,
// taken after s.mu when both are held.
type liveTable struct {
	mu      sync.Mutex
	reports map[string]agentReport
}

// set stores r for nodeID and returns the ends it adds to what was there.
func (t *liveTable) set(nodeID string, r agentReport) (added []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.reports == nil {
		t.reports = map[string]agentReport{}
	}
	old := t.reports[nodeID]
	for _, id := range r.Ends {
		if !slices.Contains(old.Ends, id) {
			added = append(added, id)
		}
	}
	t.reports[nodeID] = r
	return added
}

// get returns the report of nodeID, if any.
func (t *liveTable) get(nodeID string) (agentReport, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.reports[nodeID]
	return r, ok
}

// all returns every report.
func (t *liveTable) all() map[string]agentReport {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.reports)
}

// forget drops the report of a node that is gone.
func (t *liveTable) forget(nodeID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.reports, nodeID)
}

// updateLive changes the report of agent nodeID with change: in the
// store on a shared one (read and written in one transaction, so an end
// and a report never undo each other), and in memory. It returns the
// report as it is now.
func (s *Server) updateLive(nodeID string, change func(agentReport) agentReport) (agentReport, error) {
	if s.feed == nil {
		r, _ := s.live.get(nodeID)
		r = change(r)
		s.live.set(nodeID, r)
		return r, nil
	}
	var r agentReport
	err := s.store.Update(func(tx store.Tx) error {
		var stored agentReport
		if err := store.Get(tx, store.Nodes, nodeID, &node{}); errors.Is(err, store.ErrNotFound) {
			return errNodeGone
		} else if err != nil {
			return err
		}
		if err := store.Get(tx, store.Live, nodeID, &stored); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		r = change(stored)
		return store.Put(tx, store.Live, nodeID, &r)
	})
	if err != nil {
		return r, err
	}
	s.live.set(nodeID, r)
	return r, nil
}

// errNodeGone: the node was removed meanwhile.
var errNodeGone = errors.New("node is no longer registered")

// applyLiveLocked mirrors another replica's change of an agent's report,
// and sends the ends it adds if the agent's map stream is open here.
// Called with s.mu held.
func (s *Server) applyLiveLocked(ch store.Change) error {
	if ch.Deleted {
		s.live.forget(ch.Key)
		return nil
	}
	var r agentReport
	if err := decodeChange(ch, &r); err != nil {
		return err
	}
	added := s.live.set(ch.Key, r)
	if c := s.clients[ch.Key]; c != nil {
		for _, id := range added {
			c.endStream(id)
		}
	}
	return nil
}

// sendPendingEndsLocked queues on c, the map stream of agent nodeID that
// just opened, the ends of sessions its last report still listed.
// Called with s.mu held.
func (s *Server) sendPendingEndsLocked(nodeID string, c *mapClient) {
	if r, ok := s.live.get(nodeID); ok {
		for _, id := range r.Ends {
			c.endStream(id)
		}
	}
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
	gone := s.nodes[n.ID] == nil
	if !gone {
		n.LastSeen = now
	}
	s.mu.Unlock()
	if !gone {
		_, err := s.updateLive(n.ID, func(r agentReport) agentReport { return r.withStatus(st, now) })
		gone = errors.Is(err, errNodeGone)
		if err != nil && !gone {
			s.writeInternal(w, "store the agent's status", err, "")
			return
		}
	}
	if gone {
		s.live.forget(n.ID)
		writeProblem(w, http.StatusUnauthorized, proto.CodeUnauthenticated, "node is no longer registered", "register again")
		return
	}
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
		if now.Sub(rep.At) > proto.LiveStaleAfter {
			out.Stale = append(out.Stale, id)
			continue
		}
		clusterName := ""
		if c := s.clusters[n.ClusterID]; c != nil {
			clusterName = c.Name
		}
		for _, ls := range rep.Status.Streams {
			ls.Cluster, ls.Agent, ls.AgentHost = clusterName, n.ID, n.Hostname
			// Who owns the device is the coordinator's to say.
			if d := s.nodesByKey[ls.Device]; d != nil && d.Kind == proto.KindDevice {
				if u := s.users[d.UserID]; u != nil {
					ls.User = u.Login
				}
			}
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
// order, and the agent closes the stream at once. Ids are the agents'
// correlation ids; should two agents report the same one, each is told,
// so no agent can shield another's session by reporting its id.
func (s *Server) handleEndLive(w http.ResponseWriter, r *http.Request, p principal) {
	id := r.PathValue("id")
	var found []proto.LiveStream
	for _, ls := range s.liveSessions().Streams {
		if ls.ID == id {
			found = append(found, ls)
		}
	}
	var out *proto.EndLiveSession
	for _, ls := range found {
		if _, err := s.updateLive(ls.Agent, func(r agentReport) agentReport { return r.withEnd(id) }); errors.Is(err, errNodeGone) {
			continue // gone with its agent
		} else if err != nil {
			s.writeInternal(w, "end the live session", err, "")
			return
		}
		// Sent now if the agent's map stream is open here; otherwise by
		// the replica that holds it (applyLiveLocked), or when it opens
		// again (sendPendingEndsLocked).
		s.mu.Lock()
		sent := false
		if c := s.clients[ls.Agent]; c != nil {
			sent = c.endStream(id)
		}
		s.mu.Unlock()
		s.audit(proto.AuditEvent{Code: proto.AuditLiveEnded, Actor: p.user.Login, Object: ls.User, Cluster: ls.Cluster,
			Outcome: proto.OutcomeSuccess, Correlation: id, Metadata: map[string]string{
				"kind": ls.Kind, "cluster": ls.Cluster, "agent": ls.Agent, "namespace": ls.Namespace,
				"name": ls.Name, "path": ls.Path}})
		s.log.Info("live session ended", "by", p.user.Login, "user", ls.User, "cluster", ls.Cluster, "kind", ls.Kind, "correlation", id)
		if out == nil {
			out = &proto.EndLiveSession{Stream: ls, Sent: sent}
		}
	}
	if out == nil {
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, "no live session "+id,
			"it has ended, or its agent has not reported it: list the live sessions again (clustral sessions live)")
		return
	}
	writeJSON(w, http.StatusOK, out)
}
