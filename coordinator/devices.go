package coordinator

import (
	"fmt"
	"net/http"
	"sort"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// The devices resource as users see it: list and revoke. Devices register
// themselves in nodes.go.

// deviceToProto is the API form of the device d. Called with s.mu held.
func (s *Server) deviceToProto(d *node) proto.Device {
	pd := proto.Device{ID: d.ID, Hostname: d.Hostname, Key: d.Key, Addresses: d.Addresses, Online: s.online[d.ID] > 0, Created: d.Created, Expires: d.Expires}
	if u := s.users[d.UserID]; u != nil {
		pd.User = u.Login
	}
	return pd
}

// handleListDevices lists the caller's devices; administrators see every
// device, or one user's with ?user=.
func (s *Server) handleListDevices(w http.ResponseWriter, r *http.Request, p principal) {
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
func (s *Server) handleRevokeDevice(w http.ResponseWriter, r *http.Request, p principal) {
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
	s.removeNodeAndSyncLocked(d)
	w.WriteHeader(http.StatusNoContent)
}
