package coordinator

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// The clusters resource: create, list, show, label, rotate or revoke the
// join token of, and delete clusters. Administrators only.

// clusterToProto is the API form of c, with its agents. Called with s.mu held.
func (s *Server) clusterToProto(c *cluster) proto.Cluster {
	pc := proto.Cluster{ID: c.ID, Name: c.Name, Labels: c.Labels, Created: c.Created}
	now := s.now()
	for _, a := range s.agentsByCluster[c.ID] {
		pa := proto.Agent{NodeID: a.ID, Hostname: a.Hostname, Addresses: a.Addresses, Online: s.online[a.ID] > 0 || s.replicas.streamingElsewhere(a.ID),
			LastSeen: a.LastSeen, Relayed: len(s.endpoints[a.ID]) == 0}
		if pa.Online {
			pa.LastSeen = now
		}
		if rep, ok := s.live.get(a.ID); ok {
			st := rep.Status
			pa.Streams, st.Streams = len(st.Streams), nil
			pa.Status, pa.Reported = &st, rep.At
		}
		pc.Agents = append(pc.Agents, pa)
	}
	sort.Slice(pc.Agents, func(i, j int) bool { return pc.Agents[i].NodeID < pc.Agents[j].NodeID })
	return pc
}

func (s *Server) handleListClusters(w http.ResponseWriter, r *http.Request, _ principal) {
	s.mu.Lock()
	out := []proto.Cluster{}
	for _, c := range s.clusters {
		out = append(out, s.clusterToProto(c))
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleCreateCluster(w http.ResponseWriter, r *http.Request, p principal) {
	var req proto.CreateClusterRequest
	if !decode(w, r, &req) || !checkName(w, "cluster", req.Name) || !checkLabels(w, "labels", req.Labels) {
		return
	}
	token := newSecret("cjt_")
	c := &cluster{ID: s.newID("cls"), Name: req.Name, Labels: req.Labels, JoinTokenHash: hashSecret(token), Created: s.now()}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.clustersByName[c.Name] != nil {
		writeProblem(w, http.StatusConflict, proto.CodeConflict, fmt.Sprintf("cluster %q already exists", c.Name), "pick another name, or rotate the existing cluster's token")
		return
	}
	if !s.commit(w, "create cluster", s.putChange(store.Clusters, c.ID, c, p.user.Login, "cluster.create", map[string]any{"name": c.Name})) {
		return
	}
	s.indexCluster(c)
	writeJSON(w, http.StatusCreated, proto.CreateClusterResponse{Cluster: s.clusterToProto(c), JoinToken: token})
}

// lookupCluster finds a cluster by id or name, or returns nil. Called with s.mu held.
func (s *Server) lookupCluster(ref string) *cluster {
	return byIDOrName(s.clusters, s.clustersByName, ref)
}

// byIDOrName returns the object whose id is ref, else the one named ref,
// else nil.
func byIDOrName[T any](byID, byName map[string]*T, ref string) *T {
	if v := byID[ref]; v != nil {
		return v
	}
	return byName[ref]
}

// clusterFromPath returns the cluster the request's {cluster} path value
// names (id or name). When there is none it answers 404 itself and
// returns nil. Called with s.mu held.
func (s *Server) clusterFromPath(w http.ResponseWriter, r *http.Request) *cluster {
	return fromPath(w, r, "cluster", s.lookupCluster, "list them with clustral clusters list")
}

// fromPath returns what lookup finds for the request's path value name.
// When it finds nothing it answers 404 itself, naming what was asked for
// with hint, and returns nil.
func fromPath[T any](w http.ResponseWriter, r *http.Request, name string, lookup func(ref string) *T, hint string) *T {
	v := lookup(r.PathValue(name))
	if v == nil {
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, fmt.Sprintf("no %s %q", name, r.PathValue(name)), hint)
	}
	return v
}

func (s *Server) handleShowCluster(w http.ResponseWriter, r *http.Request, _ principal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.clusterFromPath(w, r); c != nil {
		writeJSON(w, http.StatusOK, s.clusterToProto(c))
	}
}

func (s *Server) handleLabelCluster(w http.ResponseWriter, r *http.Request, p principal) {
	var req proto.ClusterLabels
	if !decode(w, r, &req) || !checkLabels(w, "labels", req.Labels) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusterFromPath(w, r)
	if c == nil {
		return
	}
	before := s.usersOn(c.ID, s.now())
	nc := *c
	nc.Labels = req.Labels
	if !s.commit(w, "label cluster", s.putChange(store.Clusters, nc.ID, &nc, p.user.Login, "cluster.label", req.Labels)) {
		return
	}
	s.indexCluster(&nc)
	for id, u := range s.usersOn(nc.ID, s.now()) {
		before[id] = u
	}
	for _, u := range before {
		s.syncPair(u, nc.ID)
	}
	writeJSON(w, http.StatusOK, s.clusterToProto(&nc))
}

// handleClusterToken rotates (new token; agents already joined stay) or
// revokes (no token; every agent of the cluster leaves every map) the
// cluster's join token.
func (s *Server) handleClusterToken(w http.ResponseWriter, r *http.Request, p principal) {
	action, ok := pathAction(w, r, "rotate-token", "revoke-token")
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusterFromPath(w, r)
	if c == nil {
		return
	}
	nc := *c
	token := ""
	nc.JoinTokenHash = ""
	var agents []*node
	if action == "rotate-token" {
		token = newSecret("cjt_")
		nc.JoinTokenHash = hashSecret(token)
	} else {
		agents = slices.Collect(maps.Values(s.agentsByCluster[c.ID]))
	}
	if !s.commit(w, action, func(tx store.Tx) error {
		if err := store.Put(tx, store.Clusters, nc.ID, &nc); err != nil {
			return err
		}
		removed, err := s.deleteNodesWhere(tx, agents, func(n *node) bool {
			return action == "revoke-token" && n.Kind == proto.KindAgent && n.ClusterID == c.ID
		})
		if err != nil {
			return err
		}
		return s.recordChange(tx, p.user.Login, "cluster."+action, nc.ID, map[string]any{"agents_removed": removed})
	}) {
		return
	}
	delete(s.clustersByToken, c.JoinTokenHash)
	s.indexCluster(&nc)
	for _, a := range agents {
		s.removeNodeAndSyncLocked(a)
	}
	writeJSON(w, http.StatusOK, proto.JoinToken{Cluster: nc.Name, JoinToken: token})
}

func (s *Server) handleDeleteCluster(w http.ResponseWriter, r *http.Request, p principal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusterFromPath(w, r)
	if c == nil {
		return
	}
	agents := slices.Collect(maps.Values(s.agentsByCluster[c.ID]))
	asgs := slices.Collect(maps.Values(s.assignmentsByCluster[c.ID]))
	if !s.commit(w, "delete cluster", func(tx store.Tx) error {
		if err := tx.Delete(store.Clusters, c.ID); err != nil {
			return err
		}
		if _, err := s.deleteNodesWhere(tx, agents, func(n *node) bool { return n.Kind == proto.KindAgent && n.ClusterID == c.ID }); err != nil {
			return err
		}
		if err := deleteAssignments(tx, asgs); err != nil {
			return err
		}
		return s.recordChange(tx, p.user.Login, "cluster.delete", c.ID, map[string]any{"name": c.Name})
	}) {
		return
	}
	for _, a := range agents {
		s.removeNodeAndSyncLocked(a)
	}
	for _, a := range asgs {
		s.unindexAssignment(a)
	}
	s.unindexCluster(c)
	w.WriteHeader(http.StatusNoContent)
}
