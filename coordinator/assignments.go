package coordinator

import (
	"fmt"
	"net/http"
	"sort"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// The assignments resource: which user or group holds which role on
// which clusters. Administrators only.

// assignmentToProto is the API form of a. Called with s.mu held.
func (s *Server) assignmentToProto(a *assignment) proto.Assignment {
	pa := proto.Assignment{ID: a.ID, Group: a.Group, Expires: a.Expires, Created: a.Created}
	pa.User, pa.Role, pa.Cluster = s.names(a.UserID, a.RoleID, a.ClusterID)
	pa.ClusterSelector = a.Selector
	pa.Request = a.RequestID
	return pa
}

func (s *Server) handleListAssignments(w http.ResponseWriter, r *http.Request, _ principal) {
	s.mu.Lock()
	out := []proto.Assignment{}
	for _, a := range s.assignments {
		out = append(out, s.assignmentToProto(a))
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleCreateAssignment(w http.ResponseWriter, r *http.Request, p principal) {
	var req proto.Assignment
	if !decode(w, r, &req) || !checkText(w, "user", req.User, maxIdentifier) || !checkText(w, "group", req.Group, maxIdentifier) ||
		!checkLabels(w, "cluster_selector", req.ClusterSelector) {
		return
	}
	if (req.User == "") == (req.Group == "") {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "name exactly one of user or group", "e.g. --user alice@example.com or --group sre")
		return
	}
	now := s.now()
	if req.Expires != nil && !req.Expires.After(now) {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "expiry is in the past", "pass a future time or a duration")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a := &assignment{ID: s.newID("asg"), Group: req.Group, Expires: req.Expires, Created: now, CreatedBy: p.user.Login}
	if req.User != "" {
		u, err := s.lookupUser(req.User)
		if u == nil {
			writeUserLookup(w, req.User, err, "users appear after their first login; check clustral users list")
			return
		}
		a.UserID = u.ID
	}
	ro := s.lookupRole(req.Role)
	if ro == nil {
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, fmt.Sprintf("no role %q", req.Role), "create it first, or check the name")
		return
	}
	a.RoleID = ro.ID
	switch {
	case req.Cluster != "" && len(req.ClusterSelector) > 0:
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "name a cluster or a cluster selector, not both", "")
		return
	case len(req.ClusterSelector) > 0:
		a.Selector = req.ClusterSelector
	default:
		c := s.lookupCluster(req.Cluster)
		if c == nil {
			writeProblem(w, http.StatusNotFound, proto.CodeNotFound, fmt.Sprintf("no cluster %q", req.Cluster), "check the name, or pass a label selector")
			return
		}
		a.ClusterID = c.ID
	}
	if !s.commit(w, "create assignment", s.putChange(store.Assignments, a.ID, a, p.user.Login, "assignment.create", a)) {
		return
	}
	s.addAssignmentAndSyncLocked(a)
	writeJSON(w, http.StatusCreated, s.assignmentToProto(a))
}

func (s *Server) handleDeleteAssignment(w http.ResponseWriter, r *http.Request, p principal) {
	id := r.PathValue("id")
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.assignments[id]
	if a == nil {
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, fmt.Sprintf("no assignment %q", id), "list them with clustral assignments list")
		return
	}
	if !s.commit(w, "delete assignment", func(tx store.Tx) error {
		if err := tx.Delete(store.Assignments, a.ID); err != nil {
			return err
		}
		return s.recordChange(tx, p.user.Login, "assignment.delete", a.ID, nil)
	}) {
		return
	}
	s.removeAssignmentAndSyncLocked(a)
	w.WriteHeader(http.StatusNoContent)
}

// names returns the login of the user userID and the names of the role
// roleID and the cluster clusterID, each empty where there is none (or no
// id). Called with s.mu held.
func (s *Server) names(userID, roleID, clusterID string) (user, role, cluster string) {
	if u := s.users[userID]; u != nil {
		user = u.Login
	}
	if r := s.roles[roleID]; r != nil {
		role = r.Name
	}
	if c := s.clusters[clusterID]; c != nil {
		cluster = c.Name
	}
	return user, role, cluster
}

// deleteAssignments deletes each of as from the store inside tx, stopping
// at the first error.
func deleteAssignments(tx store.Tx, as []*assignment) error {
	for _, a := range as {
		if err := tx.Delete(store.Assignments, a.ID); err != nil {
			return err
		}
	}
	return nil
}
