package coordinator

import (
	"fmt"
	"net/http"
	"sort"

	"github.com/clustral/clustral/proto"
)

// The sessions resource as users see it: their own sessions (CLI logins
// and web console browser sessions), listed and ended one by one. A
// session is named by a prefix of its stored hash, which is no secret:
// the hash of a 256-bit random id cannot be turned back into a token.

// sessionIDLen is how many hex digits of a session's hash name it.
const sessionIDLen = 16

// publicSessionID is the public name of se.
func publicSessionID(se *session) string { return se.IDHash[:sessionIDLen] }

// handleListSessions lists the caller's live sessions, newest first.
func (s *Server) handleListSessions(w http.ResponseWriter, r *http.Request, p principal) {
	s.mu.Lock()
	now := s.now()
	out := []proto.SessionInfo{}
	for _, se := range s.sessions {
		if se.UserID != p.user.ID || !now.Before(se.Expires) {
			continue
		}
		n := 0
		for _, d := range s.devicesByUser[p.user.ID] {
			if d.SessionID == se.IDHash {
				n++
			}
		}
		out = append(out, proto.SessionInfo{ID: publicSessionID(se), Kind: se.Kind, Created: se.Created, Expires: se.Expires,
			Current: se == p.session, Devices: n})
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	writeJSON(w, http.StatusOK, out)
}

// handleEndSession ends one of the caller's sessions, and every device
// under it.
func (s *Server) handleEndSession(w http.ResponseWriter, r *http.Request, p principal) {
	id := r.PathValue("id")
	s.mu.Lock()
	defer s.mu.Unlock()
	var se *session
	if len(id) == sessionIDLen {
		for _, c := range s.sessions {
			if c.UserID == p.user.ID && publicSessionID(c) == id {
				se = c
				break
			}
		}
	}
	if se == nil {
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, fmt.Sprintf("you have no session %q", id), "list your sessions in the web console, under Devices")
		return
	}
	if s.revokeSessionLocked(w, p.user, se, "session.end") {
		w.WriteHeader(http.StatusNoContent)
	}
}
