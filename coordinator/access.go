package coordinator

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// Just-in-time access: a user requests a role on a cluster for a while,
// with a reason; an approver (an administrator, or a member of one of the
// role's approver groups, never the requester) approves, possibly for
// less time, or denies. An approved request becomes an assignment that
// expires by itself; the agents also enforce its expiry on their own
// clocks. A pending request expires after Config.PendingRequestTTL.

// maxGrant bounds any just-in-time grant.
const maxGrant = 7 * 24 * time.Hour

func (s *Server) requestToProto(r *accessRequest) proto.AccessRequest {
	p := proto.AccessRequest{
		ID: r.ID, Reason: r.Reason, Duration: proto.Duration(r.Duration), State: r.State,
		Created: r.Created, PendingUntil: r.PendingUntil, DecidedBy: r.DecidedBy, DecidedAt: r.DecidedAt,
		DecisionReason: r.DecisionReason, GrantExpires: r.GrantExpires,
	}
	if u := s.users[r.UserID]; u != nil {
		p.User = u.Login
	}
	if ro := s.roles[r.RoleID]; ro != nil {
		p.Role = ro.Name
	}
	if c := s.clusters[r.ClusterID]; c != nil {
		p.Cluster = c.Name
	}
	return p
}

// canApprove reports whether u may decide requests for role r. Called
// with s.mu held.
func (s *Server) canApprove(u *user, r *role) bool {
	if s.isAdmin(u) {
		return true
	}
	for _, g := range r.ApproverGroups {
		if slices.Contains(u.Groups, g) {
			return true
		}
	}
	return false
}

func (s *Server) handleCreateRequest(w http.ResponseWriter, r *http.Request) {
	p, ok := s.authSession(w, r)
	if !ok {
		return
	}
	var req proto.CreateAccessRequest
	if !decode(w, r, &req) {
		return
	}
	d := time.Duration(req.Duration)
	switch {
	case strings.TrimSpace(req.Reason) == "":
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "a reason is required", `say why, e.g. --reason "INC-1234: debug failing pods"`)
		return
	case d <= 0:
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "a positive duration is required", "e.g. --for 1h (30m, 8h, 1d and ISO 8601 are accepted)")
		return
	case d > maxGrant:
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("duration %s is over the %s maximum", d, maxGrant), "ask for less time; you can request again")
		return
	case !checkText(w, "reason", req.Reason, maxReason):
		return
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	ro := s.lookupRole(req.Role)
	if ro == nil {
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, fmt.Sprintf("no role %q", req.Role), "list the roles with clustral roles list")
		return
	}
	c := s.lookupCluster(req.Cluster)
	if c == nil {
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, fmt.Sprintf("no cluster %q", req.Cluster), "check the name with clustral kube ls")
		return
	}
	for _, old := range s.requests {
		if old.UserID == p.user.ID && old.RoleID == ro.ID && old.ClusterID == c.ID && old.State == proto.RequestPending {
			writeProblem(w, http.StatusConflict, proto.CodeConflict, fmt.Sprintf("you already have a pending request %s for %s on %s", old.ID, ro.Name, c.Name), "wait for a decision, or ask an approver")
			return
		}
	}
	ar := &accessRequest{
		ID: newID("req"), UserID: p.user.ID, RoleID: ro.ID, ClusterID: c.ID, Reason: req.Reason,
		Duration: d, State: proto.RequestPending, Created: now, PendingUntil: now.Add(s.cfg.PendingRequestTTL),
	}
	if !s.commit(w, "store request", func(tx store.Tx) error {
		if err := store.Put(tx, store.Requests, ar.ID, ar); err != nil {
			return err
		}
		return s.recordChange(tx, p.user.Login, "access.request", ar.ID, map[string]any{"role": ro.Name, "cluster": c.Name, "duration": d.String(), "reason": ar.Reason})
	}) {
		return
	}
	s.requests[ar.ID] = ar
	s.log.Info("access requested", "request", ar.ID, "user", p.user.Login, "role", ro.Name, "cluster", c.Name, "duration", d)
	writeJSON(w, http.StatusCreated, s.requestToProto(ar))
}

// handleListRequests lists the caller's own requests and those they may
// decide; administrators see all. ?state= filters.
func (s *Server) handleListRequests(w http.ResponseWriter, r *http.Request) {
	p, ok := s.authSession(w, r)
	if !ok {
		return
	}
	state := r.URL.Query().Get("state")
	s.mu.Lock()
	out := []proto.AccessRequest{}
	for _, ar := range s.requests {
		if state != "" && ar.State != state {
			continue
		}
		ro := s.roles[ar.RoleID]
		if ar.UserID != p.user.ID && (ro == nil || !s.canApprove(p.user, ro)) {
			continue
		}
		out = append(out, s.requestToProto(ar))
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleDecideRequest(w http.ResponseWriter, r *http.Request) {
	p, ok := s.authSession(w, r)
	if !ok {
		return
	}
	action := r.PathValue("action")
	var dec proto.AccessDecision
	if r.ContentLength != 0 && !decode(w, r, &dec) || !checkText(w, "reason", dec.Reason, maxReason) {
		return
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	ar := s.requests[r.PathValue("id")]
	if ar == nil {
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, fmt.Sprintf("no access request %q", r.PathValue("id")), "list them with clustral access list")
		return
	}
	ro := s.roles[ar.RoleID]
	mayDecide := ro != nil && s.canApprove(p.user, ro)
	var a *assignment
	updated := *ar
	switch action {
	case "approve", "deny":
		if ar.UserID == p.user.ID {
			writeProblem(w, http.StatusForbidden, proto.CodeForbidden, "nobody approves or denies their own request", "ask another approver")
			return
		}
		if !mayDecide {
			writeProblem(w, http.StatusForbidden, proto.CodeForbidden, p.user.Login+" may not decide requests for role "+ro.Name, "approvers are administrators and members of the role's approver groups")
			return
		}
		if ar.State != proto.RequestPending {
			writeProblem(w, http.StatusConflict, proto.CodeConflict, fmt.Sprintf("request %s is %s, not pending", ar.ID, ar.State), "")
			return
		}
		updated.DecidedBy, updated.DecidedAt, updated.DecisionReason = p.user.Login, now, dec.Reason
		if action == "deny" {
			if strings.TrimSpace(dec.Reason) == "" {
				writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "a reason is required to deny", `e.g. --reason "use the staging cluster"`)
				return
			}
			updated.State = proto.RequestDenied
			break
		}
		d := ar.Duration
		if dec.Duration < 0 || time.Duration(dec.Duration) > d {
			writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("an approval may shorten the grant, not lengthen it (requested %s)", d), "pass a duration up to the requested one")
			return
		}
		if dec.Duration > 0 {
			d = time.Duration(dec.Duration)
		}
		exp := now.Add(d)
		a = &assignment{ID: newID("asg"), UserID: ar.UserID, RoleID: ar.RoleID, ClusterID: ar.ClusterID, Expires: &exp, Created: now, CreatedBy: p.user.Login, RequestID: ar.ID}
		updated.State, updated.GrantExpires, updated.AssignmentID = proto.RequestApproved, &exp, a.ID
	case "revoke":
		if ar.UserID != p.user.ID && !mayDecide {
			writeProblem(w, http.StatusForbidden, proto.CodeForbidden, p.user.Login+" may not revoke this grant", "the requester, administrators and the role's approvers may revoke it")
			return
		}
		if ar.State != proto.RequestApproved && ar.State != proto.RequestPending {
			writeProblem(w, http.StatusConflict, proto.CodeConflict, fmt.Sprintf("request %s is %s; nothing to revoke", ar.ID, ar.State), "")
			return
		}
		updated.State, updated.DecisionReason = proto.RequestRevoked, dec.Reason
		if ar.State == proto.RequestPending {
			updated.DecidedBy, updated.DecidedAt = p.user.Login, now
		}
	default:
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, "unknown action "+action, "use approve, deny or revoke")
		return
	}
	old := s.assignments[ar.AssignmentID]
	if !s.commit(w, "store decision", func(tx store.Tx) error {
		if err := store.Put(tx, store.Requests, updated.ID, &updated); err != nil {
			return err
		}
		if a != nil {
			if err := store.Put(tx, store.Assignments, a.ID, a); err != nil {
				return err
			}
		}
		if action == "revoke" && old != nil {
			if err := tx.Delete(store.Assignments, old.ID); err != nil {
				return err
			}
		}
		return s.recordChange(tx, p.user.Login, "access."+action, ar.ID, map[string]any{"reason": dec.Reason})
	}) {
		return
	}
	*ar = updated
	if a != nil {
		s.addAssignmentLocked(a)
	}
	if action == "revoke" && old != nil {
		s.removeAssignmentLocked(old)
	}
	s.log.Info("access "+action, "request", ar.ID, "by", p.user.Login)
	writeJSON(w, http.StatusOK, s.requestToProto(ar))
}

// expireRequestsLocked moves pending requests past their deadline and
// approved ones whose grant ended to expired.
func (s *Server) expireRequestsLocked(tx store.Tx, now time.Time) ([]*accessRequest, error) {
	var changed []*accessRequest
	for _, ar := range s.requests {
		switch {
		case ar.State == proto.RequestPending && !now.Before(ar.PendingUntil),
			ar.State == proto.RequestApproved && ar.GrantExpires != nil && !now.Before(*ar.GrantExpires):
			u := *ar
			u.State = proto.RequestExpired
			if err := store.Put(tx, store.Requests, u.ID, &u); err != nil {
				return nil, err
			}
			if err := s.recordChange(tx, "system", "access.expired", u.ID, nil); err != nil {
				return nil, err
			}
			changed = append(changed, &u)
		}
	}
	return changed, nil
}
