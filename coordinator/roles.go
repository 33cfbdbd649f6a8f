package coordinator

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// The roles resource: create, list, show, update and delete roles.
// Administrators only.

func (s *Server) handleListRoles(w http.ResponseWriter, r *http.Request, _ principal) {
	s.mu.Lock()
	out := []proto.Role{}
	for _, ro := range s.roles {
		out = append(out, ro.toProto())
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleCreateRole(w http.ResponseWriter, r *http.Request, p principal) {
	var req proto.Role
	if !decode(w, r, &req) || !validateRole(w, &req) {
		return
	}
	ro := &role{ID: s.newID("rol"), Name: req.Name, Description: req.Description, Groups: req.Groups, KubeUser: req.KubeUser,
		Restrictions: req.Restrictions, ApproverGroups: req.ApproverGroups, Admin: req.Admin,
		Recording: req.Recording, RecordStdin: req.RecordStdin, Created: s.now()}
	slices.Sort(ro.Groups)
	ro.Groups = slices.Compact(ro.Groups)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rolesByName[ro.Name] != nil {
		writeProblemDoc(w, &proto.Problem{Status: http.StatusConflict, Code: proto.CodeConflict, Field: "name",
			Title: fmt.Sprintf("role %q already exists", ro.Name), Hint: "update it instead"})
		return
	}
	if !s.commit(w, "create role", s.putChange(store.Roles, ro.ID, ro, p.user.Login, "role.create", ro)) {
		return
	}
	s.indexRole(ro)
	writeJSON(w, http.StatusCreated, ro.toProto())
}

// lookupRole finds a role by id or name, or returns nil. Called with s.mu held.
func (s *Server) lookupRole(ref string) *role {
	return byIDOrName(s.roles, s.rolesByName, ref)
}

// roleFromPath returns the role the request's {role} path value names (id
// or name). When there is none it answers 404 itself and returns nil.
// Called with s.mu held.
func (s *Server) roleFromPath(w http.ResponseWriter, r *http.Request) *role {
	return fromPath(w, r, "role", s.lookupRole, "list them with clustral roles list")
}

// validateRole checks a role's fields. When one is not valid it answers
// 400 itself, naming the field, and returns false.
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
		writeFieldProblem(w, "groups", fmt.Sprintf("role %q names no Kubernetes group", req.Name), "pass at least one group, e.g. --group view-all")
		return false
	}
	for _, g := range req.Groups {
		if strings.TrimSpace(g) == "" {
			writeFieldProblem(w, "groups", "empty Kubernetes group name in role "+req.Name, "remove the empty --group")
			return false
		}
	}
	if err := req.Restrictions.Validate(); err != nil {
		var fe *proto.FieldError
		field := "restrictions"
		if errors.As(err, &fe) {
			field = fe.Field // the first problem's
		}
		writeFieldProblem(w, field, "role "+req.Name+": "+err.Error(), "fix the restriction and try again")
		return false
	}
	if err := req.Recording.Validate(); err != nil {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "role "+req.Name+": "+err.Error(), "pass --recording off, best-effort or required")
		return false
	}
	if req.RecordStdin && req.Recording.Rank() == 0 {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "role "+req.Name+" records stdin but records no sessions",
			"pass --recording best-effort or required with --record-stdin, or drop --record-stdin")
		return false
	}
	return true
}

func (s *Server) handleShowRole(w http.ResponseWriter, r *http.Request, _ principal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ro := s.roleFromPath(w, r); ro != nil {
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
	ro := s.roleFromPath(w, r)
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
		writeProblemDoc(w, &proto.Problem{Status: http.StatusConflict, Code: proto.CodeConflict, Field: "name",
			Title: fmt.Sprintf("role %q already exists", req.Name), Hint: "pick another name"})
		return
	}
	nr := *ro
	nr.Name, nr.Description, nr.Groups, nr.KubeUser = req.Name, req.Description, req.Groups, req.KubeUser
	nr.Restrictions, nr.ApproverGroups, nr.Admin = req.Restrictions, req.ApproverGroups, req.Admin
	nr.Recording, nr.RecordStdin = req.Recording, req.RecordStdin
	slices.Sort(nr.Groups)
	nr.Groups = slices.Compact(nr.Groups)
	if !s.commit(w, "update role", s.putChange(store.Roles, nr.ID, &nr, p.user.Login, "role.update", &nr)) {
		return
	}
	s.indexRole(&nr)
	for _, a := range s.assignmentsByRole[nr.ID] {
		s.syncAssignment(a)
	}
	writeJSON(w, http.StatusOK, nr.toProto())
}

func (s *Server) handleDeleteRole(w http.ResponseWriter, r *http.Request, p principal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ro := s.roleFromPath(w, r)
	if ro == nil {
		return
	}
	asgs := slices.Collect(maps.Values(s.assignmentsByRole[ro.ID]))
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
	s.unindexRole(ro)
	for _, a := range asgs {
		s.removeAssignmentAndSyncLocked(a)
	}
	w.WriteHeader(http.StatusNoContent)
}
