package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
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

// requestToProto is the API form of r. Called with s.mu held.
func (s *Server) requestToProto(r *accessRequest) proto.AccessRequest {
	p := proto.AccessRequest{
		ID: r.ID, Reason: r.Reason, Duration: proto.Duration(r.Duration), State: r.State,
		Created: r.Created, PendingUntil: r.PendingUntil, DecidedBy: r.DecidedBy, DecidedAt: r.DecidedAt,
		DecisionReason: r.DecisionReason, GrantExpires: r.GrantExpires,
	}
	p.User, p.Role, p.Cluster = s.names(r.UserID, r.RoleID, r.ClusterID)
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

func (s *Server) handleCreateRequest(w http.ResponseWriter, r *http.Request, p principal) {
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
	pending := 0
	for _, old := range s.requests {
		if old.UserID != p.user.ID || old.State != proto.RequestPending {
			continue
		}
		if old.RoleID == ro.ID && old.ClusterID == c.ID {
			writeProblem(w, http.StatusConflict, proto.CodeConflict, fmt.Sprintf("you already have a pending request %s for %s on %s", old.ID, ro.Name, c.Name), "wait for a decision, or ask an approver")
			return
		}
		pending++
	}
	if pending >= s.cfg.MaxPendingRequests {
		writeProblem(w, http.StatusConflict, proto.CodeQuotaExceeded, fmt.Sprintf("you already have %d access requests waiting for a decision, the most one user may have", pending),
			"wait for decisions, or withdraw one (clustral access list, clustral access revoke <id>)")
		return
	}
	ar := &accessRequest{
		ID: s.newID("req"), UserID: p.user.ID, RoleID: ro.ID, ClusterID: c.ID, Reason: req.Reason,
		Duration: d, State: proto.RequestPending, Created: now, PendingUntil: now.Add(s.cfg.PendingRequestTTL),
	}
	if !s.commit(w, "store request", s.putChange(store.Requests, ar.ID, ar, p.user.Login, "access.request", map[string]any{"role": ro.Name, "cluster": c.Name, "duration": d.String(), "reason": ar.Reason})) {
		return
	}
	s.requests[ar.ID] = ar
	s.log.Info("access requested", "request", ar.ID, "user", p.user.Login, "role", ro.Name, "cluster", c.Name, "duration", d)
	writeJSON(w, http.StatusCreated, s.requestToProto(ar))
}

// handleListRequests lists the caller's own requests and those they may
// decide; administrators see all. ?state= filters.
func (s *Server) handleListRequests(w http.ResponseWriter, r *http.Request, p principal) {
	state := r.URL.Query().Get("state")
	s.mu.Lock()
	approvable := map[string]bool{} // role ids
	for id, ro := range s.roles {
		if s.canApprove(p.user, ro) {
			approvable[id] = true
		}
	}
	s.mu.Unlock()
	visible := func(ar *accessRequest) bool {
		return (state == "" || ar.State == state) && (ar.UserID == p.user.ID || approvable[ar.RoleID])
	}
	// Ended requests are read from the archive without the global lock.
	var ended []*accessRequest
	if state == "" || requestEnded(state) {
		var err error
		if ended, err = s.archivedRequests(visible); err != nil {
			s.writeInternal(w, "read archived requests", err, "")
			return
		}
	}
	s.mu.Lock()
	out := []proto.AccessRequest{}
	for _, list := range [][]*accessRequest{slices.Collect(maps.Values(s.requests)), ended} {
		for _, ar := range list {
			if visible(ar) {
				out = append(out, s.requestToProto(ar))
			}
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	writeJSON(w, http.StatusOK, out)
}

// maxListedEnded bounds the ended requests one listing returns: the
// newest.
const maxListedEnded = 500

// requestEnded reports whether state is final: the request is archived.
func requestEnded(state string) bool {
	return state == proto.RequestDenied || state == proto.RequestRevoked || state == proto.RequestExpired
}

// archiveKey orders the archive newest first: the time the request was
// made, counted down from the largest time, then its id.
func archiveKey(ar *accessRequest) string {
	return fmt.Sprintf("%016x_%s", uint64(math.MaxInt64-max(ar.Created.UnixNano(), 0)), ar.ID)
}

// errEnough ends an archive scan that has found what it needs.
var errEnough = errors.New("enough")

// archivedRequests returns the newest ended requests that keep accepts,
// newest first, at most maxListedEnded. It reads the store, not the
// memory, and takes no lock of the Server; the archive is ordered newest
// first, so it stops as soon as it has enough.
func (s *Server) archivedRequests(keep func(*accessRequest) bool) ([]*accessRequest, error) {
	var out []*accessRequest
	err := s.store.View(func(tx store.Tx) error {
		return tx.ForEach(store.RequestArchive, func(k string, raw []byte) error {
			var ar accessRequest
			if err := json.Unmarshal(raw, &ar); err != nil {
				return fmt.Errorf("decode archived request %s: %w", k, err)
			}
			if keep(&ar) {
				out = append(out, &ar)
			}
			if len(out) >= maxListedEnded {
				return errEnough
			}
			return nil
		})
	})
	if errors.Is(err, errEnough) {
		err = nil
	}
	return out, err
}

// writeEndedOrUnknown answers a decision on request id, which is not
// live: 409 naming its state when the archive holds it, else 404. It
// reads the archive without the Server's lock.
func (s *Server) writeEndedOrUnknown(w http.ResponseWriter, id string) {
	ended, err := s.archivedRequest(id)
	if err == nil && ended != nil {
		writeProblem(w, http.StatusConflict, proto.CodeConflict, fmt.Sprintf("request %s is %s, not pending", id, ended.State),
			"make a new request if access is still needed (clustral access request)")
		return
	}
	if err != nil {
		s.log.Error("read the access request archive", "err", err)
	}
	writeProblem(w, http.StatusNotFound, proto.CodeNotFound, fmt.Sprintf("no pending or approved access request %q", id),
		"list them with clustral access list, and make a new request if access is still needed")
}

// archivedRequest returns the ended request id from the archive, nil if
// the archive does not hold it. It looks it up by id (RequestArchiveIDs);
// in an archive written before those existed, and not yet indexed
// (indexRequestArchive), it reads the archive through.
func (s *Server) archivedRequest(id string) (*accessRequest, error) {
	var found *accessRequest
	err := s.store.View(func(tx store.Tx) error {
		key, err := tx.GetRaw(store.RequestArchiveIDs, id)
		if err == nil {
			var ar accessRequest
			if err := store.Get(tx, store.RequestArchive, string(key), &ar); err != nil {
				return fmt.Errorf("archived request %s: %w", id, err)
			}
			found = &ar
			return nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if _, err := tx.GetRaw(store.Meta, metaArchiveIDs); err == nil || !errors.Is(err, store.ErrNotFound) {
			return err // indexed: the archive does not hold it
		}
		return tx.ForEach(store.RequestArchive, func(k string, raw []byte) error {
			var ar accessRequest
			if err := json.Unmarshal(raw, &ar); err != nil {
				return fmt.Errorf("decode archived request %s: %w", k, err)
			}
			if ar.ID == id {
				found = &ar
				return errEnough
			}
			return nil
		})
	})
	if errors.Is(err, errEnough) {
		err = nil
	}
	return found, err
}

// metaArchiveIDs is the Meta key present once every request in the
// archive has its entry in RequestArchiveIDs.
const metaArchiveIDs = "request_archive_ids"

// indexRequestArchive gives every archived request an entry in
// RequestArchiveIDs, once, for an archive written before those existed,
// in as many transactions as the store needs; storeRequest keeps them
// from then on. It returns how many it wrote.
func indexRequestArchive(st store.Store) (int, error) {
	type entry struct{ id, key string }
	var todo []entry
	err := st.View(func(tx store.Tx) error {
		if _, err := tx.GetRaw(store.Meta, metaArchiveIDs); err == nil || !errors.Is(err, store.ErrNotFound) {
			return err
		}
		todo = []entry{}
		return tx.ForEach(store.RequestArchive, func(k string, raw []byte) error {
			var ar accessRequest
			if err := json.Unmarshal(raw, &ar); err != nil {
				return fmt.Errorf("decode archived request %s: %w", k, err)
			}
			todo = append(todo, entry{ar.ID, k})
			return nil
		})
	})
	if err != nil || todo == nil {
		return 0, err
	}
	per := 1000
	if n := store.MaxWrites(st); n > 0 {
		per = max(1, n-4) // the marker and a backend's bookkeeping
	}
	for i := 0; ; i += per {
		batch := todo[min(i, len(todo)):min(i+per, len(todo))]
		last := i+per >= len(todo)
		err := st.Update(func(tx store.Tx) error {
			for _, e := range batch {
				if err := tx.PutRaw(store.RequestArchiveIDs, e.id, []byte(e.key)); err != nil {
					return err
				}
			}
			if last {
				return tx.PutRaw(store.Meta, metaArchiveIDs, []byte("1"))
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("index the access request archive: %w", err)
		}
		if last {
			return len(todo), nil
		}
	}
}

// storeRequest stores ar inside tx where its state belongs: a live one in
// Requests, an ended one moved to RequestArchive.
func storeRequest(tx store.Tx, ar *accessRequest) error {
	if !requestEnded(ar.State) {
		return store.Put(tx, store.Requests, ar.ID, ar)
	}
	if err := tx.Delete(store.Requests, ar.ID); err != nil {
		return err
	}
	key := archiveKey(ar)
	if err := tx.PutRaw(store.RequestArchiveIDs, ar.ID, []byte(key)); err != nil {
		return err
	}
	return store.Put(tx, store.RequestArchive, key, ar)
}

// setRequestLocked applies a stored ar to memory, which holds live
// requests only. Called with s.mu held.
func (s *Server) setRequestLocked(ar *accessRequest) {
	if requestEnded(ar.State) {
		delete(s.requests, ar.ID)
		return
	}
	s.requests[ar.ID] = ar
}

// archiveEnded moves the ended requests a store of an earlier version
// kept among the live ones to the archive. New calls it before anything
// else can reach the state, so it takes no lock.
func (s *Server) archiveEnded() error {
	var ended []*accessRequest
	for _, ar := range s.requests {
		if requestEnded(ar.State) {
			ended = append(ended, ar)
		}
	}
	if len(ended) == 0 {
		return nil
	}
	err := s.store.Update(func(tx store.Tx) error {
		for _, ar := range ended {
			if err := storeRequest(tx, ar); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("archive ended access requests: %w", err)
	}
	for _, ar := range ended {
		delete(s.requests, ar.ID)
	}
	return nil
}

func (s *Server) handleDecideRequest(w http.ResponseWriter, r *http.Request, p principal) {
	action := r.PathValue("action")
	var dec proto.AccessDecision
	if r.ContentLength != 0 && !decode(w, r, &dec) || !checkText(w, "reason", dec.Reason, maxReason) {
		return
	}
	now := s.now()
	s.mu.Lock()
	ar := s.requests[r.PathValue("id")]
	if ar == nil {
		s.mu.Unlock()
		s.writeEndedOrUnknown(w, r.PathValue("id"))
		return
	}
	defer s.mu.Unlock()
	ro := s.roles[ar.RoleID]
	mayDecide := ro != nil && s.canApprove(p.user, ro)
	var a *assignment
	updated := *ar
	switch action {
	case "approve", "deny":
		if ro == nil {
			// The role was deleted after the request was made: there is
			// nothing left to grant, and no approvers to decide.
			writeProblem(w, http.StatusConflict, proto.CodeConflict, fmt.Sprintf("the role of request %s was deleted; it can no longer be approved or denied", ar.ID), "the requester may withdraw it (clustral access revoke), or it expires by itself")
			return
		}
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
		a = &assignment{ID: s.newID("asg"), UserID: ar.UserID, RoleID: ar.RoleID, ClusterID: ar.ClusterID, Expires: &exp, Created: now, CreatedBy: p.user.Login, RequestID: ar.ID}
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
		if err := storeRequest(tx, &updated); err != nil {
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
	s.setRequestLocked(ar)
	if a != nil {
		s.addAssignmentAndSyncLocked(a)
	}
	if action == "revoke" && old != nil {
		s.removeAssignmentAndSyncLocked(old)
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
			if err := storeRequest(tx, &u); err != nil {
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
