package coordinator

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// The administrative API beyond creation: show, update and delete roles;
// label clusters, rotate and revoke their join tokens, delete them;
// disable and enable users; list and revoke devices. Every change is
// stored with an audit-ready change record and reaches the affected nodes
// at once.

func (s *Server) roleRef(w http.ResponseWriter, r *http.Request) *role {
	ro := s.lookupRole(r.PathValue("role"))
	if ro == nil {
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, fmt.Sprintf("no role %q", r.PathValue("role")), "list them with clustral roles list")
	}
	return ro
}

func (s *Server) clusterRef(w http.ResponseWriter, r *http.Request) *cluster {
	c := s.lookupCluster(r.PathValue("cluster"))
	if c == nil {
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, fmt.Sprintf("no cluster %q", r.PathValue("cluster")), "list them with clustral clusters list")
	}
	return c
}

// pathAction returns the request's {action} path value when it is one of
// allowed. Otherwise it answers 404, naming the allowed actions, and
// returns false.
func pathAction(w http.ResponseWriter, r *http.Request, allowed ...string) (string, bool) {
	action := r.PathValue("action")
	if !slices.Contains(allowed, action) {
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, "unknown action "+action, "use "+strings.Join(allowed, " or "))
		return "", false
	}
	return action, true
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

func (s *Server) userRef(w http.ResponseWriter, r *http.Request) *user {
	u, err := s.lookupUser(r.PathValue("user"))
	if u == nil {
		writeUserLookup(w, r.PathValue("user"), err, "users appear after their first login; list them with clustral users list")
	}
	return u
}

// validateRole checks a role's fields.
func validateRole(w http.ResponseWriter, req *proto.Role) bool {
	if !checkName(w, "role", req.Name) ||
		!checkText(w, "description", req.Description, maxDescription) ||
		!checkText(w, "kube_user", req.KubeUser, maxIdentifier) ||
		!checkList(w, "groups", req.Groups, maxIdentifier) ||
		!checkList(w, "approver_groups", req.ApproverGroups, maxIdentifier) ||
		!checkRestrictions(w, req.Restrictions) {
		return false
	}
	if len(req.Groups) == 0 && req.KubeUser == "" {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("role %q names no Kubernetes group", req.Name), "pass at least one group, e.g. --group view-all")
		return false
	}
	for _, g := range req.Groups {
		if strings.TrimSpace(g) == "" {
			writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "empty Kubernetes group name in role "+req.Name, "remove the empty --group")
			return false
		}
	}
	if err := req.Restrictions.Validate(); err != nil {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "role "+req.Name+": "+err.Error(), "fix the restriction and try again")
		return false
	}
	return true
}

func (s *Server) handleShowRole(w http.ResponseWriter, r *http.Request, _ principal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ro := s.roleRef(w, r); ro != nil {
		writeJSON(w, http.StatusOK, ro.toProto())
	}
}

func (s *Server) handleUpdateRole(w http.ResponseWriter, r *http.Request, p principal) {
	var req proto.Role
	if !decode(w, r, &req) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ro := s.roleRef(w, r)
	if ro == nil {
		return
	}
	if req.Name == "" {
		req.Name = ro.Name
	}
	if !validateRole(w, &req) {
		return
	}
	if other := s.rolesByName[req.Name]; other != nil && other != ro {
		writeProblem(w, http.StatusConflict, proto.CodeConflict, fmt.Sprintf("role %q already exists", req.Name), "pick another name")
		return
	}
	nr := *ro
	nr.Name, nr.Description, nr.Groups, nr.KubeUser = req.Name, req.Description, req.Groups, req.KubeUser
	nr.Restrictions, nr.ApproverGroups, nr.Admin = req.Restrictions, req.ApproverGroups, req.Admin
	slices.Sort(nr.Groups)
	nr.Groups = slices.Compact(nr.Groups)
	if !s.commit(w, "update role", func(tx store.Tx) error {
		if err := store.Put(tx, store.Roles, nr.ID, &nr); err != nil {
			return err
		}
		return s.recordChange(tx, p.user.Login, "role.update", nr.ID, &nr)
	}) {
		return
	}
	s.putRole(&nr)
	for _, a := range s.asgByRole[nr.ID] {
		s.syncAssignment(a)
	}
	writeJSON(w, http.StatusOK, nr.toProto())
}

func (s *Server) handleDeleteRole(w http.ResponseWriter, r *http.Request, p principal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ro := s.roleRef(w, r)
	if ro == nil {
		return
	}
	asgs := slices.Collect(maps.Values(s.asgByRole[ro.ID]))
	if !s.commit(w, "delete role", func(tx store.Tx) error {
		if err := tx.Delete(store.Roles, ro.ID); err != nil {
			return err
		}
		if err := deleteAssignments(tx, asgs); err != nil {
			return err
		}
		return s.recordChange(tx, p.user.Login, "role.delete", ro.ID, map[string]any{"name": ro.Name, "assignments": len(asgs)})
	}) {
		return
	}
	delete(s.roles, ro.ID)
	delete(s.rolesByName, ro.Name)
	for _, a := range asgs {
		s.removeAssignmentLocked(a)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleShowCluster(w http.ResponseWriter, r *http.Request, _ principal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.clusterRef(w, r); c != nil {
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
	c := s.clusterRef(w, r)
	if c == nil {
		return
	}
	before := s.usersOn(c.ID, s.now())
	nc := *c
	nc.Labels = req.Labels
	if !s.commit(w, "label cluster", func(tx store.Tx) error {
		if err := store.Put(tx, store.Clusters, nc.ID, &nc); err != nil {
			return err
		}
		return s.recordChange(tx, p.user.Login, "cluster.label", nc.ID, req.Labels)
	}) {
		return
	}
	s.putCluster(&nc)
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
	c := s.clusterRef(w, r)
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
		agents = slices.Collect(maps.Values(s.agentsByClust[c.ID]))
	}
	if !s.commit(w, action, func(tx store.Tx) error {
		if err := store.Put(tx, store.Clusters, nc.ID, &nc); err != nil {
			return err
		}
		if err := deleteNodes(tx, agents); err != nil {
			return err
		}
		return s.recordChange(tx, p.user.Login, "cluster."+action, nc.ID, map[string]any{"agents_removed": len(agents)})
	}) {
		return
	}
	delete(s.clustersByToken, c.JoinTokenHash)
	s.putCluster(&nc)
	for _, a := range agents {
		s.removeNodeLocked(a)
	}
	writeJSON(w, http.StatusOK, proto.JoinToken{Cluster: nc.Name, JoinToken: token})
}

func (s *Server) handleDeleteCluster(w http.ResponseWriter, r *http.Request, p principal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusterRef(w, r)
	if c == nil {
		return
	}
	agents := slices.Collect(maps.Values(s.agentsByClust[c.ID]))
	asgs := slices.Collect(maps.Values(s.asgByClust[c.ID]))
	if !s.commit(w, "delete cluster", func(tx store.Tx) error {
		if err := tx.Delete(store.Clusters, c.ID); err != nil {
			return err
		}
		if err := deleteNodes(tx, agents); err != nil {
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
		s.removeNodeLocked(a)
	}
	for _, a := range asgs {
		s.dropAssignment(a)
	}
	delete(s.clusters, c.ID)
	delete(s.clustersByName, c.Name)
	delete(s.clustersByToken, c.JoinTokenHash)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleShowUser(w http.ResponseWriter, r *http.Request, _ principal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u := s.userRef(w, r); u != nil {
		writeJSON(w, http.StatusOK, u.toProto(s.isAdmin(u)))
	}
}

// handleUserState disables (revoking every session and device at once) or
// enables a user.
func (s *Server) handleUserState(w http.ResponseWriter, r *http.Request, p principal) {
	action, ok := pathAction(w, r, "disable", "enable")
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.userRef(w, r)
	if u == nil {
		return
	}
	if u.ID == p.user.ID && action == "disable" {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "you cannot disable yourself", "ask another administrator")
		return
	}
	nu := *u
	nu.Disabled = action == "disable"
	var devs []*node
	var sess []string
	if nu.Disabled {
		devs = slices.Collect(maps.Values(s.devicesByUser[u.ID]))
		for h, se := range s.sessions {
			if se.UserID == u.ID {
				sess = append(sess, h)
			}
		}
	}
	if !s.commit(w, action+" user", func(tx store.Tx) error {
		if err := store.Put(tx, store.Users, nu.ID, &nu); err != nil {
			return err
		}
		for _, h := range sess {
			if err := tx.Delete(store.Sessions, h); err != nil {
				return err
			}
		}
		if err := deleteNodes(tx, devs); err != nil {
			return err
		}
		return s.recordChange(tx, p.user.Login, "user."+action, u.ID, map[string]any{"login": u.Login, "sessions": len(sess), "devices": len(devs)})
	}) {
		return
	}
	// Remove the devices while the user still maps to their clusters.
	for _, d := range devs {
		s.removeNodeLocked(d)
	}
	for _, h := range sess {
		delete(s.sessions, h)
	}
	s.putUser(&nu)
	writeJSON(w, http.StatusOK, nu.toProto(s.isAdmin(&nu)))
}

func (s *Server) deviceToProto(d *node) proto.Device {
	pd := proto.Device{ID: d.ID, Hostname: d.Hostname, Key: d.Key, Addresses: d.Addresses, Online: s.online[d.ID] > 0, Created: d.Created, Expires: d.Expires}
	if u := s.users[d.UserID]; u != nil {
		pd.User = u.Login
	}
	return pd
}

// handleListDevices lists the caller's devices; administrators see every
// device, or one user's with ?user=.
func (s *Server) handleListDevices(w http.ResponseWriter, r *http.Request) {
	p, ok := s.authSession(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	admin := s.isAdmin(p.user)
	filter := r.URL.Query().Get("user")
	var fu *user
	if filter != "" {
		var err error
		fu, err = s.lookupUser(filter)
		// A non-admin may name only themselves. Anyone else is refused
		// the same way whether they exist or not, so the filter cannot
		// be used to find out who has an account.
		if !admin && (fu == nil || fu != p.user) {
			s.mu.Unlock()
			writeProblem(w, http.StatusForbidden, proto.CodeForbidden, "only administrators may list other users' devices", "leave out --user to list your own")
			return
		}
		if fu == nil {
			s.mu.Unlock()
			writeUserLookup(w, filter, err, "")
			return
		}
	}
	out := []proto.Device{}
	for _, n := range s.nodes {
		if n.Kind != proto.KindDevice || (!admin && n.UserID != p.user.ID) || (fu != nil && n.UserID != fu.ID) {
			continue
		}
		out = append(out, s.deviceToProto(n))
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	writeJSON(w, http.StatusOK, out)
}

// handleRevokeDevice removes a device from the mesh: its owner or an
// administrator may.
func (s *Server) handleRevokeDevice(w http.ResponseWriter, r *http.Request) {
	p, ok := s.authSession(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.nodes[r.PathValue("id")]
	if d == nil || d.Kind != proto.KindDevice {
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, fmt.Sprintf("no device %q", r.PathValue("id")), "list them with clustral devices list")
		return
	}
	if d.UserID != p.user.ID && !s.isAdmin(p.user) {
		writeProblem(w, http.StatusForbidden, proto.CodeForbidden, "only the device's owner or an administrator may revoke it", "")
		return
	}
	if !s.commit(w, "revoke device", func(tx store.Tx) error {
		if err := deleteNode(tx, d); err != nil {
			return err
		}
		return s.recordChange(tx, p.user.Login, "device.revoke", d.ID, map[string]any{"hostname": d.Hostname})
	}) {
		return
	}
	s.removeNodeLocked(d)
	w.WriteHeader(http.StatusNoContent)
}
