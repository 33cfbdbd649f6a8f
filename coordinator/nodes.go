package coordinator

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// Nodes: the registration of devices and agents, deregistration, and the
// endpoints a node publishes. A node's map stream is in mapstream.go, its
// relay in relay.go.

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// checkRegistration answers 400 itself and returns false unless the
// registration names a WireGuard key and, if any, a valid host name.
func checkRegistration(w http.ResponseWriter, key proto.Key, hostname string) bool {
	if key.IsZero() {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "public_key is required", "send the node's WireGuard public key")
		return false
	}
	if hostname != "" && !hostnameRE.MatchString(hostname) {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("hostname %q is not a valid host name", hostname), "use letters, digits, dots, dashes, at most 63 characters")
		return false
	}
	return true
}

// handleRegisterDevice registers a device under the caller's session. The
// session is checked when the headers arrive, so that a caller without one
// is refused before its body is read, and again when the device is written
// (see registerNode): a logout or a disable that lands while the body is
// on its way refuses the registration.
func (s *Server) handleRegisterDevice(w http.ResponseWriter, r *http.Request, p principal) {
	var req proto.RegisterDeviceRequest
	if !decode(w, r, &req) || !checkRegistration(w, req.PublicKey, req.Hostname) {
		return
	}
	token := newSecret("cnt_")
	n := &node{ID: s.newID("dev"), Kind: proto.KindDevice, Key: req.PublicKey, TokenHash: hashSecret(token), Hostname: req.Hostname}
	resp, prob := s.registerNode(n, func(now time.Time) (string, *proto.Problem) {
		se, u := s.sessions[p.session.IDHash], s.users[p.user.ID]
		if prob := deviceOwnerProblem(se, u, now); prob != nil {
			return "", prob
		}
		n.UserID, n.SessionID, n.Expires = u.ID, se.IDHash, se.Expires
		return u.Login, nil
	}, nil)
	if prob != nil {
		writeProblemDoc(w, prob)
		return
	}
	resp.NodeToken = token
	writeJSON(w, http.StatusOK, resp)
}

// errJoinToken is why an agent registration is refused for its token.
var errJoinToken = errors.New("invalid or revoked join token")

// handleRegisterAgent registers an agent of the cluster whose join token
// the caller holds. The token is looked up when the headers arrive, so a
// caller without one is refused before its body is read, and again when
// the agent is written (see registerNode): a revoke-token, rotate-token or
// cluster delete that lands while the body is on its way refuses the
// registration, and no certificate is issued.
func (s *Server) handleRegisterAgent(w http.ResponseWriter, r *http.Request, tokenHash string) {
	var req proto.RegisterAgentRequest
	if !decode(w, r, &req) || !checkRegistration(w, req.PublicKey, req.Hostname) {
		return
	}
	if req.CSR == "" {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "csr is required", "send a PEM certificate request for the agent's serving key")
		return
	}
	if !checkText(w, "csr", req.CSR, maxCSR) {
		return
	}
	certKey, err := csrPublicKey(req.CSR)
	if err != nil {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, err.Error(), "send a valid PEM certificate request")
		return
	}
	token := newSecret("cnt_")
	n := &node{
		ID: s.newID("agt"), Kind: proto.KindAgent, Key: req.PublicKey, TokenHash: hashSecret(token),
		Hostname: req.Hostname, CertKey: certKey,
	}
	var c *cluster
	var names []string // the certificate's, read under s.mu
	resp, prob := s.registerNode(n, func(now time.Time) (string, *proto.Problem) {
		if c = s.clustersByToken[tokenHash]; c == nil {
			return "", &proto.Problem{Status: http.StatusUnauthorized, Code: proto.CodeInvalidJoinToken}
		}
		n.ClusterID, n.LastSeen = c.ID, now
		names = s.agentNames(c)
		return "agent:" + c.Name, nil
	}, func(addrs []netip.Prefix, now time.Time) (string, error) {
		return s.ca.issue(certKey, names, addrs, now)
	})
	if prob != nil && prob.Code == proto.CodeInvalidJoinToken {
		s.refuseJoinToken(w, r)
		return
	}
	if prob != nil {
		writeProblemDoc(w, prob)
		return
	}
	resp.NodeToken = token
	resp.Cluster = c.Name
	writeJSON(w, http.StatusOK, resp)
}

// refuseJoinToken audits and answers an agent registration whose join
// token is unknown, revoked or rotated away.
func (s *Server) refuseJoinToken(w http.ResponseWriter, r *http.Request) {
	s.sourceFailed(r)
	s.auditFailure(proto.AuditAgentRefused, r, "", errJoinToken)
	writeProblem(w, http.StatusUnauthorized, proto.CodeInvalidJoinToken, errJoinToken.Error(), "get the cluster's current join token from an administrator (clustral clusters rotate-token)")
}

// registerNode allocates addresses for n, stores it, and tells the nodes
// that should see it.
//
// authorize checks the credential the registration was accepted with,
// against the state in memory: it runs with s.mu held, before the store
// transaction, and again after it. It fills in n's owner (user and
// session, or cluster) from what it finds, and returns the audit actor,
// or the problem that refuses the registration; then nothing is written
// and no map changes. certify, if set, issues the agent's certificate
// inside the transaction; it runs without s.mu on a lone store, and
// with it on a shared one.
//
// On a lone store s.mu is not held through the store's write, so that
// concurrent registrations share one disk sync (the store's group
// commit) and do not hold off every other API call meanwhile. (A shared
// store's optimistic transactions would instead retry against this
// replica's other writes until they gave up, so there the write holds
// s.mu like every other.) What the lock used to guarantee is kept thus:
//   - a key or a device quota is claimed under s.mu before the write
//     (registering), so two registrations cannot both take it;
//   - the transaction reads the credential again from the store
//     (credentialHolds), so a revocation committed before it refuses
//     the registration;
//   - a revocation committed after it, but applied to memory before the
//     node was (it did not know the node), is caught by the second
//     authorize, and the node is deleted again (revokedWhileWriting);
//     the registration is refused, as if the revocation came first;
//   - the response is sent only once the write is durable.
func (s *Server) registerNode(n *node, authorize func(now time.Time) (actor string, p *proto.Problem), certify func([]netip.Prefix, time.Time) (string, error)) (*proto.RegisterResponse, *proto.Problem) {
	action := string(n.Kind) + ".register"
	s.mu.Lock()
	now := s.now()
	actor, prob := authorize(now)
	if prob == nil {
		prob = s.claimRegistrationLocked(n, actor)
	}
	var ev proto.AuditEvent
	var joinTokenHash string
	var err error
	if prob == nil {
		n.Created = now
		if c := s.clusters[n.ClusterID]; c != nil && n.Kind == proto.KindAgent {
			joinTokenHash = c.JoinTokenHash
		}
		// The audit event is made now: it names the cluster from memory.
		ev, err = s.changeEvent(actor, action, n.ID, map[string]any{"key": n.Key.String(), "hostname": n.Hostname})
		if err != nil {
			s.releaseRegistrationLocked(n)
		}
	}
	s.mu.Unlock()
	if prob != nil {
		return nil, prob
	}
	if err != nil {
		return nil, s.registerFailed(n, err)
	}

	var cert string
	var reserved []netip.Prefix // by every run of the transaction
	if s.feed != nil {
		// A shared store's transactions conflict rather than wait, and
		// every write appends to the audit chain: written outside the
		// lock, a registration retried against this replica's other
		// writes, which hold the lock through theirs, until it gave up.
		// On a shared store it writes under the lock like them; a lone
		// store group-commits registrations instead.
		s.mu.Lock()
	}
	err = s.store.Update(func(tx store.Tx) error {
		if err := credentialHolds(tx, n, now, joinTokenHash); err != nil {
			return err
		}
		addrs, err := s.ipam.allocate(tx, n.ID)
		if err != nil {
			return err
		}
		reserved = append(reserved, addrs...)
		n.Addresses = addrs
		if certify != nil {
			if cert, err = certify(addrs, now); err != nil {
				return err
			}
		}
		if err := store.Put(tx, store.Nodes, n.ID, n); err != nil {
			return err
		}
		_, err = auditlog.Append(tx, ev)
		return err
	})
	if s.feed != nil {
		s.mu.Unlock()
	}
	if err == nil && s.testRegisterWritten != nil {
		s.testRegisterWritten()
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseRegistrationLocked(n)
	for _, a := range reserved {
		if err != nil || !slices.Contains(n.Addresses, a) {
			s.ipam.free(a.Addr())
		}
	}
	if err != nil {
		return nil, s.registerFailed(n, err)
	}
	if _, prob := authorize(now); prob != nil {
		return nil, s.revokedWhileWriting(n, prob)
	}
	if s.nodes[n.ID] == nil { // else this replica's follow applied it first
		s.indexNode(n)
		if n.Kind == proto.KindAgent && (s.feed == nil || s.replicas != nil) {
			// Not in its users' maps before its map stream opens: until
			// then it does not know their devices and cannot answer them.
			// (With replicas the stream may open on another replica, which
			// this one hears of only through the presence register; see
			// agentsGone.)
			s.gone[n.ID] = true
		}
		s.nodeChanged(n)
	}
	s.metrics.registrations.WithLabelValues(string(n.Kind)).Inc()
	s.log.Info("node registered", "node", n.ID, "kind", n.Kind, "actor", actor, "addresses", n.Addresses)
	return &proto.RegisterResponse{
		NodeID: n.ID, Addresses: n.Addresses, MeshDomain: s.cfg.MeshDomain, Prefixes: []netip.Prefix{s.cfg.IPv4Prefix, s.v6},
		ExpiresAt: n.Expires, Certificate: cert, CABundle: string(s.ca.certPEM), STUN: s.stunAddr(),
	}, nil
}

// claimRegistrationLocked refuses n's registration if its key is taken,
// by a node or by a registration under way, or its user has as many
// devices as they may, counting those being registered; otherwise it
// claims both for n until releaseRegistrationLocked. Called with s.mu
// held.
func (s *Server) claimRegistrationLocked(n *node, actor string) *proto.Problem {
	if _, busy := s.registering[n.Key]; busy || s.nodesByKey[n.Key] != nil {
		return &proto.Problem{Status: http.StatusConflict, Code: proto.CodeConflict, Title: "this WireGuard key is already registered", Hint: "generate a new key (clustral up does this after clustral down)"}
	}
	if n.Kind == proto.KindDevice {
		if have := len(s.devicesByUser[n.UserID]) + s.registeringByUser[n.UserID]; have >= s.cfg.MaxDevicesPerUser {
			return &proto.Problem{Status: http.StatusConflict, Code: proto.CodeQuotaExceeded,
				Title: fmt.Sprintf("%s already has %d devices, the most one user may have", actor, have),
				Hint:  "revoke one you no longer use (clustral devices list, clustral devices revoke <id>), or run clustral down where you are done"}
		}
		s.registeringByUser[n.UserID]++
	}
	s.registering[n.Key] = n.UserID
	return nil
}

// releaseRegistrationLocked gives up what claimRegistrationLocked claimed
// for n. Called with s.mu held.
func (s *Server) releaseRegistrationLocked(n *node) {
	userID, ok := s.registering[n.Key]
	if !ok {
		return
	}
	delete(s.registering, n.Key)
	if n.Kind == proto.KindDevice {
		if s.registeringByUser[userID]--; s.registeringByUser[userID] <= 0 {
			delete(s.registeringByUser, userID)
		}
	}
}

// registerFailed maps the error of a registration's transaction to the
// problem the caller is answered with.
func (s *Server) registerFailed(n *node, err error) *proto.Problem {
	if gone, ok := errors.AsType[*credentialGoneError](err); ok {
		return gone.problem
	}
	if errors.Is(err, errPoolExhausted) {
		return &proto.Problem{Status: http.StatusServiceUnavailable, Code: proto.CodeAddressExhausted, Title: err.Error(), Hint: "widen the overlay prefix or remove stale nodes"}
	}
	if n.Kind == proto.KindAgent && strings.Contains(err.Error(), "csr") {
		return &proto.Problem{Status: http.StatusBadRequest, Code: proto.CodeBadRequest, Title: err.Error(), Hint: "send a valid PEM certificate request"}
	}
	// A store error stays in the log (see writeInternal).
	s.log.Error("register node", "node", n.ID, "kind", n.Kind, "err", err)
	return &proto.Problem{Status: http.StatusInternalServerError, Code: proto.CodeInternal, Title: "register node: internal error (see the coordinator's log)"}
}

// revokedWhileWriting deletes n, stored but not yet in memory, whose
// credential was revoked while its registration was being written, and
// returns the problem that refuses the registration (prob, from
// authorize). The revocation did not know n, so it did not delete it.
// Called with s.mu held.
func (s *Server) revokedWhileWriting(n *node, prob *proto.Problem) *proto.Problem {
	err := s.store.Update(func(tx store.Tx) error {
		if err := deleteNode(tx, n); err != nil {
			return err
		}
		return s.recordChange(tx, n.ID, string(n.Kind)+".deregister", n.ID, map[string]any{"reason": "credential revoked while registering"})
	})
	if err != nil {
		s.log.Error("delete a node whose credential was revoked while it registered", "node", n.ID, "err", err)
		return &proto.Problem{Status: http.StatusInternalServerError, Code: proto.CodeInternal, Title: "register node: internal error (see the coordinator's log)"}
	}
	if old := s.nodes[n.ID]; old != nil { // applied by follow meanwhile
		s.removeNodeAndSyncLocked(old)
	} else {
		for _, a := range n.Addresses {
			s.ipam.free(a.Addr())
		}
	}
	return prob
}

// deviceOwnerProblem says why session se of user u may not register a
// device at now, or returns nil if it may. se and u may be nil (gone).
func deviceOwnerProblem(se *session, u *user, now time.Time) *proto.Problem {
	switch {
	case se == nil || u == nil || se.UserID != u.ID || !now.Before(se.Expires):
		return &proto.Problem{Status: http.StatusUnauthorized, Code: proto.CodeSessionExpired,
			Title: "this session was revoked or has expired while the device registered", Hint: "run clustral login"}
	case u.Disabled:
		return &proto.Problem{Status: http.StatusForbidden, Code: proto.CodeForbidden, Title: "user " + u.Login + " is disabled", Hint: "ask an administrator"}
	}
	return nil
}

// credentialGoneError refuses a registration whose credential the store
// no longer holds.
type credentialGoneError struct{ problem *proto.Problem }

func (e *credentialGoneError) Error() string { return e.problem.Title }

// credentialHolds reads, inside tx, the credential n's registration was
// authorized with from memory: the session and user of a device, the
// join token of an agent's cluster (joinTokenHash, as memory had it). A
// revocation committed before tx, by this replica or by another one that
// this one has not applied yet, thus refuses the registration, and on
// etcd one committed concurrently makes tx conflict and run again
// (invariant 8 across replicas).
func credentialHolds(tx store.Tx, n *node, now time.Time, joinTokenHash string) error {
	gone := func(p *proto.Problem) error { return &credentialGoneError{p} }
	switch n.Kind {
	case proto.KindDevice:
		se, u := &session{}, &user{}
		if err := store.Get(tx, store.Sessions, n.SessionID, se); errors.Is(err, store.ErrNotFound) {
			se = nil
		} else if err != nil {
			return err
		}
		if err := store.Get(tx, store.Users, n.UserID, u); errors.Is(err, store.ErrNotFound) {
			u = nil
		} else if err != nil {
			return err
		}
		if prob := deviceOwnerProblem(se, u, now); prob != nil {
			return gone(prob)
		}
	case proto.KindAgent:
		var c cluster
		err := store.Get(tx, store.Clusters, n.ClusterID, &c)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if err != nil || joinTokenHash == "" || c.JoinTokenHash != joinTokenHash {
			return gone(&proto.Problem{Status: http.StatusUnauthorized, Code: proto.CodeInvalidJoinToken})
		}
	}
	return nil
}

// handleDeregister removes the calling node (an agent shutting down, or
// clustral down).
func (s *Server) handleDeregister(w http.ResponseWriter, r *http.Request, n *node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.commit(w, "deregister", func(tx store.Tx) error {
		if err := deleteNode(tx, n); err != nil {
			return err
		}
		return s.recordChange(tx, n.ID, string(n.Kind)+".deregister", n.ID, nil)
	}) {
		return
	}
	s.removeNodeAndSyncLocked(n)
	w.WriteHeader(http.StatusNoContent)
}

// handleEndpoints replaces the calling node's published endpoints and
// tells its peers.
func (s *Server) handleEndpoints(w http.ResponseWriter, r *http.Request, n *node) {
	var req proto.EndpointsUpdate
	if !decode(w, r, &req) {
		return
	}
	if len(req.Endpoints) > maxEndpoints {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "too many endpoints", "publish at most "+strconv.Itoa(maxEndpoints)+" endpoints")
		return
	}
	for _, e := range req.Endpoints {
		if !e.IsValid() || e.Port() == 0 || e.Addr().IsUnspecified() {
			writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "bad endpoint "+e.String(), "endpoints must be ip:port")
			return
		}
	}
	if s.cfg.RelayOnly {
		w.WriteHeader(http.StatusNoContent) // passed on to no one
		return
	}
	s.mu.Lock()
	if s.nodes[n.ID] == nil {
		s.mu.Unlock()
		writeProblem(w, http.StatusUnauthorized, proto.CodeUnauthenticated, "node is no longer registered", "register again")
		return
	}
	s.endpoints[n.ID] = req.Endpoints
	s.nodeChanged(n)
	s.mu.Unlock()
	s.shareEndpoints(n, req.Endpoints)
	w.WriteHeader(http.StatusNoContent)
}
