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

// The users resource: look users up, list, show, disable and enable them.
// Users are created by their first login (login.go, auth.go).

// lookupUser finds a user by id, login or verified email. An email that
// more than one user has is refused with errAmbiguousEmail rather than
// resolved to one of them. It returns (nil, nil) when nobody matches.
// Called with s.mu held.
func (s *Server) lookupUser(ref string) (*user, error) {
	if u := s.users[ref]; u != nil {
		return u, nil
	}
	if u := s.userByLogin(ref); u != nil {
		return u, nil
	}
	var found []*user
	for _, u := range s.users {
		if u.Email != "" && strings.EqualFold(u.Email, ref) {
			found = append(found, u)
		}
	}
	switch len(found) {
	case 0:
		return nil, nil
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("%w: %d users have email %s; name one by login or id (clustral users list)", errAmbiguousEmail, len(found), ref)
}

// errAmbiguousEmail refuses a user lookup by an email several users share.
var errAmbiguousEmail = errors.New("ambiguous email")

// writeUserLookup answers a failed lookupUser of ref: 409 for an
// ambiguous email, 404 for no such user.
func writeUserLookup(w http.ResponseWriter, ref string, err error, hint string) {
	if err != nil {
		writeProblem(w, http.StatusConflict, proto.CodeConflict, err.Error(), "name the user by login or id")
		return
	}
	writeProblem(w, http.StatusNotFound, proto.CodeNotFound, fmt.Sprintf("no user %q", ref), hint)
}

func (s *Server) handleListUsers(w http.ResponseWriter, r *http.Request, _ principal) {
	s.mu.Lock()
	out := []proto.User{}
	for _, u := range s.users {
		out = append(out, u.toProto(s.isAdmin(u)))
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Login < out[j].Login })
	writeJSON(w, http.StatusOK, out)
}

// userFromPath returns the user the request's {user} path value names (see
// lookupUser). When there is none, or an email names several, it answers
// the problem itself (writeUserLookup) and returns nil. Called with s.mu
// held.
func (s *Server) userFromPath(w http.ResponseWriter, r *http.Request) *user {
	u, err := s.lookupUser(r.PathValue("user"))
	if u == nil {
		writeUserLookup(w, r.PathValue("user"), err, "users appear after their first login; list them with clustral users list")
	}
	return u
}

func (s *Server) handleShowUser(w http.ResponseWriter, r *http.Request, _ principal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u := s.userFromPath(w, r); u != nil {
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
	u := s.userFromPath(w, r)
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
		nsess, err := s.deleteSessionsWhere(tx, sess, func(se *session) bool { return nu.Disabled && se.UserID == u.ID })
		if err != nil {
			return err
		}
		ndevs, err := s.deleteNodesWhere(tx, devs, func(n *node) bool { return nu.Disabled && n.Kind == proto.KindDevice && n.UserID == u.ID })
		if err != nil {
			return err
		}
		return s.recordChange(tx, p.user.Login, "user."+action, u.ID, map[string]any{"login": u.Login, "sessions": nsess, "devices": ndevs})
	}) {
		return
	}
	// Remove the devices while the user still maps to their clusters.
	for _, d := range devs {
		s.removeNodeAndSyncLocked(d)
	}
	for _, h := range sess {
		delete(s.sessions, h)
	}
	s.indexUser(&nu)
	writeJSON(w, http.StatusOK, nu.toProto(s.isAdmin(&nu)))
}

// deleteSessions deletes the sessions whose id hashes are hashes from the
// store inside tx, stopping at the first error.
func deleteSessions(tx store.Tx, hashes []string) error {
	for _, h := range hashes {
		if err := tx.Delete(store.Sessions, h); err != nil {
			return err
		}
	}
	return nil
}
