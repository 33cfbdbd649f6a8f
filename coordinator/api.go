package coordinator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/version"
	"github.com/clustral/clustral/proto"
)

// OpsHandler serves what monitoring reads: GET /metrics, /healthz and
// /readyz. ListenAndServe serves it on Config.MetricsListen when that is set.
func (s *Server) OpsHandler() http.Handler {
	mux := http.NewServeMux()
	s.opsRoutes(mux, true)
	return mux
}

// opsRoutes adds /healthz and /readyz to mux, and /metrics with metrics.
func (s *Server) opsRoutes(mux *http.ServeMux, metrics bool) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", s.handleReady)
	if metrics {
		mux.Handle("GET /metrics", s.metrics.handler())
	}
}

// Handler returns the coordinator's HTTP API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	v := proto.APIVersion
	// With a metrics address, /metrics is served there only.
	s.opsRoutes(mux, s.cfg.MetricsListen == "")
	mux.HandleFunc("GET "+v+"/info", s.handleInfo)
	mux.HandleFunc("GET "+v+"/admin/backup", s.admin(s.handleBackup))

	mux.HandleFunc("POST "+v+"/login/start", s.perSource("login_start", s.handleLoginStart))
	mux.HandleFunc("POST "+v+"/login/poll", s.handleLoginPoll)
	mux.HandleFunc("POST "+v+"/login/token", s.perSource("login_token", s.handleLoginToken))
	mux.HandleFunc("POST "+v+"/login/exchange", s.perSource("login_exchange", s.handleLoginExchange))
	mux.HandleFunc("GET /oidc/callback", s.perSource("callback", s.handleCallback))
	mux.HandleFunc("POST /oidc/confirm", s.perSource("confirm", s.handleConfirm))
	mux.HandleFunc("GET "+v+"/whoami", s.handleWhoami)
	mux.HandleFunc("DELETE "+v+"/session", s.handleLogout)

	mux.HandleFunc("POST "+v+"/devices", s.handleRegisterDevice)
	mux.HandleFunc("POST "+v+"/agents", s.handleRegisterAgent)
	mux.HandleFunc("DELETE "+v+"/nodes/self", s.handleDeregister)
	mux.HandleFunc("GET "+v+"/map", s.handleMap)
	s.relayRoutes(mux)

	mux.HandleFunc("GET "+v+"/clusters", s.admin(s.handleListClusters))
	mux.HandleFunc("POST "+v+"/clusters", s.admin(s.handleCreateCluster))
	mux.HandleFunc("GET "+v+"/roles", s.admin(s.handleListRoles))
	mux.HandleFunc("POST "+v+"/roles", s.admin(s.handleCreateRole))
	mux.HandleFunc("GET "+v+"/assignments", s.admin(s.handleListAssignments))
	mux.HandleFunc("POST "+v+"/assignments", s.admin(s.handleCreateAssignment))
	mux.HandleFunc("DELETE "+v+"/assignments/{id}", s.admin(s.handleDeleteAssignment))
	mux.HandleFunc("GET "+v+"/users", s.admin(s.handleListUsers))
	mux.HandleFunc("GET "+v+"/users/{user}", s.admin(s.handleShowUser))
	mux.HandleFunc("POST "+v+"/users/{user}/{action}", s.admin(s.handleUserState))
	mux.HandleFunc("GET "+v+"/roles/{role}", s.admin(s.handleShowRole))
	mux.HandleFunc("PUT "+v+"/roles/{role}", s.admin(s.handleUpdateRole))
	mux.HandleFunc("DELETE "+v+"/roles/{role}", s.admin(s.handleDeleteRole))
	mux.HandleFunc("GET "+v+"/clusters/{cluster}", s.admin(s.handleShowCluster))
	mux.HandleFunc("PUT "+v+"/clusters/{cluster}/labels", s.admin(s.handleLabelCluster))
	mux.HandleFunc("POST "+v+"/clusters/{cluster}/{action}", s.admin(s.handleClusterToken))
	mux.HandleFunc("DELETE "+v+"/clusters/{cluster}", s.admin(s.handleDeleteCluster))
	mux.HandleFunc("GET "+v+"/devices", s.handleListDevices)
	mux.HandleFunc("DELETE "+v+"/devices/{id}", s.handleRevokeDevice)
	mux.HandleFunc("POST "+v+"/access-requests", s.handleCreateRequest)
	mux.HandleFunc("GET "+v+"/access-requests", s.handleListRequests)
	mux.HandleFunc("POST "+v+"/access-requests/{id}/{action}", s.handleDecideRequest)
	mux.HandleFunc("POST "+v+"/audit/events", s.handleAuditIngest)
	mux.HandleFunc("GET "+v+"/audit/events", s.handleAuditQuery)
	mux.HandleFunc("GET "+v+"/audit/verify", s.admin(s.handleAuditVerify))
	mux.HandleFunc("POST "+v+"/audit/verify", s.admin(s.handleAuditVerify))
	mux.HandleFunc("POST "+v+"/audit/checkpoints", s.admin(s.handleAuditCheckpoint))

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, proto.MaxBodyBytes)
		// Every request has a correlation id: the caller's, if it sent a
		// sane one, else a new one. It is echoed in the answer and in the
		// log line, so a CLI error can be matched with the server's log.
		id := r.Header.Get(proto.HeaderRequestID)
		if !requestIDRE.MatchString(id) {
			id = newID("req")[4:]
		}
		w.Header().Set(proto.HeaderRequestID, id)
		start := s.now()
		sw := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		mux.ServeHTTP(sw, r)
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || r.URL.Path == "/metrics" {
			return
		}
		s.log.Debug("api", "request_id", id, "method", r.Method, "path", r.URL.Path, "status", sw.status, "duration", s.now().Sub(start))
	})
}

var requestIDRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{8,64}$`)

// statusRecorder remembers the status of an answer. It passes Flush and
// Hijack through, for the map stream and the relay.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// writeProblem answers with an RFC 7807 problem document.
func writeProblem(w http.ResponseWriter, status int, code proto.ErrorCode, title, hint string) {
	writeProblemDoc(w, &proto.Problem{Status: status, Code: code, Title: title, Hint: hint})
}

// commit runs fn in one store transaction, for a handler that applies
// the change to memory only once it is stored. When the transaction fails
// commit answers 500 titled "what: err" and returns false; nothing was
// stored.
func (s *Server) commit(w http.ResponseWriter, what string, fn func(store.Tx) error) bool {
	if err := s.st.Update(fn); err != nil {
		writeProblem(w, http.StatusInternalServerError, proto.CodeInternal, what+": "+err.Error(), "")
		return false
	}
	return true
}

func writeProblemDoc(w http.ResponseWriter, p *proto.Problem) {
	if p.Type == "" {
		p.Type = "https://clustral.dev/errors/" + strings.ToLower(string(p.Code))
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set(proto.HeaderErrorCode, string(p.Code))
	w.WriteHeader(p.Status)
	json.NewEncoder(w).Encode(p)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// decode reads exactly one JSON object into v, answering the problem
// itself on error. It is strict: a field v does not have (a typo like
// "descriptoin") is refused with 400 naming the field, and so is anything
// after the object, so that nothing a client sends is silently dropped.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errTrailingData
		}
	}
	if err == nil {
		return true
	}
	var (
		mbe *http.MaxBytesError
		ute *json.UnmarshalTypeError
		se  *json.SyntaxError
	)
	switch {
	case errors.As(err, &mbe):
		writeProblem(w, http.StatusRequestEntityTooLarge, proto.CodeTooLarge, fmt.Sprintf("request body over %d bytes", mbe.Limit), "send a smaller request")
	case errors.Is(err, errTrailingData):
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "unexpected data after the JSON object in the request body", "send exactly one JSON object")
	case errors.Is(err, io.EOF):
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "empty request body", "send a JSON object")
	case unknownField(err) != "":
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("unknown field %s in the request body", unknownField(err)),
			"check the field's spelling against the API; a client newer than this coordinator may send fields it does not know yet: upgrade the coordinator")
	case errors.As(err, &ute) && ute.Field != "":
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("field %q: JSON %s where %s is expected", ute.Field, ute.Value, ute.Type), "send the field with the type the API documents")
	case errors.As(err, &se):
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("malformed JSON body at byte %d: %v", se.Offset, err), "check the request against the API")
	default:
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "malformed JSON body: "+err.Error(), "check the request against the API")
	}
	return false
}

var errTrailingData = errors.New("data after the JSON object")

// unknownField returns the quoted name of the field a DisallowUnknownFields
// decoder refused, or "". encoding/json reports it only in the message.
func unknownField(err error) string {
	name, ok := strings.CutPrefix(err.Error(), "json: unknown field ")
	if !ok {
		return ""
	}
	return name
}

func (s *Server) handleReady(w http.ResponseWriter, _ *http.Request) {
	if err := s.st.View(func(tx store.Tx) error { _, err := tx.GetRaw(store.Meta, metaCA); return err }); err != nil {
		http.Error(w, "store unavailable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ok\n"))
}

// Info is served at GET /api/v1/info, unauthenticated.
type infoResponse struct {
	Version    string    `json:"version"`
	MeshDomain string    `json:"mesh_domain"`
	Issuer     string    `json:"issuer,omitempty"`
	Time       time.Time `json:"time"`
}

func (s *Server) handleInfo(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, infoResponse{Version: version.Get().Version, MeshDomain: s.cfg.MeshDomain, Issuer: s.cfg.OIDC.Issuer, Time: s.now().UTC()})
}

// ---- login ----

func (s *Server) handleLoginToken(w http.ResponseWriter, r *http.Request) {
	var req proto.TokenExchangeRequest
	if !decode(w, r, &req) {
		return
	}
	if s.oidc == nil {
		writeProblem(w, http.StatusServiceUnavailable, proto.CodeLoginFailed, errNoOIDC.Error(), "configure --oidc-issuer on the coordinator")
		return
	}
	if req.IDToken == "" {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "id_token is required", "pass an ID token from the configured issuer")
		return
	}
	idt, err := s.oidc.verifyDirect(r.Context(), req.IDToken)
	if err != nil {
		s.metrics.login("token", err)
		s.log.Warn("login by token refused", "err", err)
		s.auditFailure(proto.AuditIDTokenRefused, r, "", err)
		writeProblem(w, http.StatusUnauthorized, proto.CodeLoginFailed, "ID token refused: "+err.Error(), "use a fresh ID token from "+s.cfg.OIDC.Issuer)
		return
	}
	sess, err := s.loginFromToken(idt, "token")
	s.metrics.login("token", err)
	if err != nil {
		s.auditFailure(proto.AuditIDTokenRefused, r, idt.Subject, err)
		writeProblem(w, http.StatusForbidden, proto.CodeLoginFailed, err.Error(), "")
		return
	}
	writeJSON(w, http.StatusOK, sess)
}

// whoamiResponse is served at GET /api/v1/whoami.
type whoamiResponse = proto.Whoami

func (s *Server) handleWhoami(w http.ResponseWriter, r *http.Request) {
	p, ok := s.authSession(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	now := s.now()
	resp := whoamiResponse{User: p.user.toProto(s.isAdmin(p.user)), SessionExpires: p.session.Expires}
	for cid := range s.clustersOf(p.user, now) {
		c := s.clusters[cid]
		rc := proto.ReachableCluster{Name: c.Name, Roles: s.rolesOn(p.user, cid, now)}
		resp.Clusters = append(resp.Clusters, rc)
	}
	for _, c := range s.clusters {
		resp.Requestable = append(resp.Requestable, c.Name)
	}
	s.mu.Unlock()
	sort.Strings(resp.Requestable)
	sort.Slice(resp.Clusters, func(i, j int) bool { return resp.Clusters[i].Name < resp.Clusters[j].Name })
	writeJSON(w, http.StatusOK, resp)
}

// handleLogout revokes the caller's session and every device under it.
func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request) {
	p, ok := s.authSession(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var devs []*node
	for _, d := range s.devicesByUser[p.user.ID] {
		if d.SessionID == p.session.IDHash {
			devs = append(devs, d)
		}
	}
	if !s.commit(w, "revoke session", func(tx store.Tx) error {
		if err := tx.Delete(store.Sessions, p.session.IDHash); err != nil {
			return err
		}
		if err := deleteNodes(tx, devs); err != nil {
			return err
		}
		return s.recordChange(tx, p.user.Login, "session.revoke", p.user.ID, map[string]any{"devices": len(devs)})
	}) {
		return
	}
	delete(s.sessions, p.session.IDHash)
	for _, d := range devs {
		s.removeNodeLocked(d)
	}
	w.WriteHeader(http.StatusNoContent)
}

// ---- registration ----

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

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
func (s *Server) handleRegisterDevice(w http.ResponseWriter, r *http.Request) {
	if !s.sourceReady(w, r, "register") {
		return
	}
	p, ok := s.authSession(w, r)
	if !ok {
		s.sourceFailed(r)
		return
	}
	var req proto.RegisterDeviceRequest
	if !decode(w, r, &req) || !checkRegistration(w, req.PublicKey, req.Hostname) {
		return
	}
	token := newSecret("cnt_")
	n := &node{ID: newID("dev"), Kind: proto.KindDevice, Key: req.PublicKey, TokenHash: hashSecret(token), Hostname: req.Hostname}
	resp, prob := s.registerNode(n, func(now time.Time) (string, *proto.Problem) {
		se, u := s.sessions[p.session.IDHash], s.users[p.user.ID]
		switch {
		case se == nil || u == nil || se.UserID != u.ID || !now.Before(se.Expires):
			return "", &proto.Problem{Status: http.StatusUnauthorized, Code: proto.CodeSessionExpired,
				Title: "this session was revoked or has expired while the device registered", Hint: "run clustral login"}
		case u.Disabled:
			return "", &proto.Problem{Status: http.StatusForbidden, Code: proto.CodeForbidden, Title: "user " + u.Login + " is disabled", Hint: "ask an administrator"}
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
func (s *Server) handleRegisterAgent(w http.ResponseWriter, r *http.Request) {
	if !s.sourceReady(w, r, "register") {
		return
	}
	raw, ok := bearer(r)
	if !ok {
		s.sourceFailed(r)
		writeProblem(w, http.StatusUnauthorized, proto.CodeInvalidJoinToken, "missing join token", "pass the cluster's join token (clustral clusters add prints it)")
		return
	}
	tokenHash := hashSecret(raw)
	s.mu.Lock()
	known := s.clustersByToken[tokenHash] != nil
	s.mu.Unlock()
	if !known {
		s.refuseJoinToken(w, r)
		return
	}
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
		ID: newID("agt"), Kind: proto.KindAgent, Key: req.PublicKey, TokenHash: hashSecret(token),
		Hostname: req.Hostname, CertKey: certKey,
	}
	var c *cluster
	resp, prob := s.registerNode(n, func(now time.Time) (string, *proto.Problem) {
		if c = s.clustersByToken[tokenHash]; c == nil {
			return "", &proto.Problem{Status: http.StatusUnauthorized, Code: proto.CodeInvalidJoinToken}
		}
		n.ClusterID, n.LastSeen = c.ID, now
		return "agent:" + c.Name, nil
	}, func(addrs []netip.Prefix, now time.Time) (string, error) {
		return s.ca.issue(certKey, s.agentNames(c), addrs, now)
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
// against the state as it is at the write: it runs with s.mu held, just
// before the store transaction, so no revocation (which takes s.mu too)
// can land between the check and the write. It fills in n's owner (user
// and session, or cluster) and creation time from what it finds, and
// returns the audit actor, or the problem that refuses the registration;
// then nothing is written and no map changes. certify, if set, issues the
// agent's certificate inside the transaction.
func (s *Server) registerNode(n *node, authorize func(now time.Time) (actor string, p *proto.Problem), certify func([]netip.Prefix, time.Time) (string, error)) (*proto.RegisterResponse, *proto.Problem) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	actor, prob := authorize(now)
	if prob != nil {
		return nil, prob
	}
	n.Created = now
	if old := s.nodesByKey[n.Key]; old != nil {
		return nil, &proto.Problem{Status: http.StatusConflict, Code: proto.CodeConflict, Title: "this WireGuard key is already registered", Hint: "generate a new key (clustral up does this after clustral down)"}
	}
	if n.Kind == proto.KindDevice && len(s.devicesByUser[n.UserID]) >= s.cfg.MaxDevicesPerUser {
		return nil, &proto.Problem{Status: http.StatusConflict, Code: proto.CodeQuotaExceeded,
			Title: fmt.Sprintf("%s already has %d devices, the most one user may have", actor, len(s.devicesByUser[n.UserID])),
			Hint:  "revoke one you no longer use (clustral devices list, clustral devices revoke <id>), or run clustral down where you are done"}
	}
	var cert string
	err := s.st.Update(func(tx store.Tx) error {
		addrs, err := s.ipam.allocate(tx, n.ID)
		if err != nil {
			return err
		}
		n.Addresses = addrs
		if certify != nil {
			if cert, err = certify(addrs, now); err != nil {
				return err
			}
		}
		if err := store.Put(tx, store.Nodes, n.ID, n); err != nil {
			return err
		}
		return s.recordChange(tx, actor, string(n.Kind)+".register", n.ID, map[string]any{"key": n.Key.String(), "hostname": n.Hostname})
	})
	if errors.Is(err, errPoolExhausted) {
		return nil, &proto.Problem{Status: http.StatusServiceUnavailable, Code: proto.CodeAddressExhausted, Title: err.Error(), Hint: "widen the overlay prefix or remove stale nodes"}
	}
	if err != nil {
		if certify != nil && strings.Contains(err.Error(), "csr") {
			return nil, &proto.Problem{Status: http.StatusBadRequest, Code: proto.CodeBadRequest, Title: err.Error(), Hint: "send a valid PEM certificate request"}
		}
		return nil, &proto.Problem{Status: http.StatusInternalServerError, Code: proto.CodeInternal, Title: "register node: " + err.Error()}
	}
	s.putNode(n)
	s.nodeChanged(n)
	s.metrics.registrations.WithLabelValues(string(n.Kind)).Inc()
	s.log.Info("node registered", "node", n.ID, "kind", n.Kind, "actor", actor, "addresses", n.Addresses)
	return &proto.RegisterResponse{
		NodeID: n.ID, Addresses: n.Addresses, MeshDomain: s.cfg.MeshDomain, Prefixes: []netip.Prefix{s.cfg.IPv4Prefix, s.v6},
		ExpiresAt: n.Expires, Certificate: cert, CABundle: string(s.ca.certPEM), STUN: s.stunAddr(),
	}, nil
}

// handleDeregister removes the calling node (an agent shutting down, or
// clustral down).
func (s *Server) handleDeregister(w http.ResponseWriter, r *http.Request) {
	n, ok := s.authNode(w, r)
	if !ok {
		return
	}
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
	s.removeNodeLocked(n)
	w.WriteHeader(http.StatusNoContent)
}

// ---- admin ----

// authSessionBody is authSession for a request that changes state from
// its body. The session is checked when the headers arrive, so a caller
// without one is refused before its body is read; then the whole body is
// read (bounded by proto.MaxBodyBytes and the server's read timeout) and
// the session is checked again. A logout or a disable that lands while
// the body is on its way thus authorizes nothing: a client cannot hold a
// checked request open until its credential is gone. The handler decodes
// the buffered body as usual.
func (s *Server) authSessionBody(w http.ResponseWriter, r *http.Request) (principal, bool) {
	if _, ok := s.authSession(w, r); !ok {
		return principal{}, false
	}
	if r.Body != nil && r.Body != http.NoBody {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				writeProblem(w, http.StatusRequestEntityTooLarge, proto.CodeTooLarge, fmt.Sprintf("request body over %d bytes", mbe.Limit), "send a smaller request")
			} else {
				writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "read request body: "+err.Error(), "send the whole body at once")
			}
			return principal{}, false
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.ContentLength = int64(len(b))
	}
	return s.authSession(w, r)
}

// admin wraps a handler that only administrators may call. The session
// and the administrator's rights are checked after the body has arrived
// (see authSessionBody).
func (s *Server) admin(h func(http.ResponseWriter, *http.Request, principal)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := s.authSessionBody(w, r)
		if !ok {
			return
		}
		s.mu.Lock()
		isAdmin := s.isAdmin(p.user)
		s.mu.Unlock()
		if !isAdmin {
			s.audit(proto.AuditEvent{Code: proto.AuditAPIDenied, Actor: p.user.Login, Outcome: proto.OutcomeDenied, Error: proto.CodeForbidden,
				Metadata: map[string]string{"method": r.Method, "path": r.URL.Path}})
			writeProblem(w, http.StatusForbidden, proto.CodeForbidden, p.user.Login+" is not an administrator", "ask an administrator; admins are named in the coordinator's configuration")
			return
		}
		h(w, r, p)
	}
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func checkName(w http.ResponseWriter, what, name string) bool {
	if !nameRE.MatchString(name) {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("%s name %q is not valid", what, name), "use lowercase letters, digits and dashes (a DNS label), at most 63 characters")
		return false
	}
	return true
}

func (s *Server) clusterToProto(c *cluster) proto.Cluster {
	pc := proto.Cluster{ID: c.ID, Name: c.Name, Labels: c.Labels, Created: c.Created}
	for _, a := range s.agentsByClust[c.ID] {
		pc.Agents = append(pc.Agents, proto.Agent{NodeID: a.ID, Hostname: a.Hostname, Addresses: a.Addresses, Online: s.online[a.ID] > 0})
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
	c := &cluster{ID: newID("cls"), Name: req.Name, Labels: req.Labels, JoinTokenHash: hashSecret(token), Created: s.now()}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.clustersByName[c.Name] != nil {
		writeProblem(w, http.StatusConflict, proto.CodeConflict, fmt.Sprintf("cluster %q already exists", c.Name), "pick another name, or rotate the existing cluster's token")
		return
	}
	if !s.commit(w, "create cluster", func(tx store.Tx) error {
		if err := store.Put(tx, store.Clusters, c.ID, c); err != nil {
			return err
		}
		return s.recordChange(tx, p.user.Login, "cluster.create", c.ID, map[string]any{"name": c.Name})
	}) {
		return
	}
	s.putCluster(c)
	writeJSON(w, http.StatusCreated, proto.CreateClusterResponse{Cluster: s.clusterToProto(c), JoinToken: token})
}

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
	ro := &role{ID: newID("rol"), Name: req.Name, Description: req.Description, Groups: req.Groups, KubeUser: req.KubeUser,
		Restrictions: req.Restrictions, ApproverGroups: req.ApproverGroups, Admin: req.Admin, Created: s.now()}
	slices.Sort(ro.Groups)
	ro.Groups = slices.Compact(ro.Groups)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rolesByName[ro.Name] != nil {
		writeProblem(w, http.StatusConflict, proto.CodeConflict, fmt.Sprintf("role %q already exists", ro.Name), "update it instead")
		return
	}
	if !s.commit(w, "create role", func(tx store.Tx) error {
		if err := store.Put(tx, store.Roles, ro.ID, ro); err != nil {
			return err
		}
		return s.recordChange(tx, p.user.Login, "role.create", ro.ID, ro)
	}) {
		return
	}
	s.putRole(ro)
	writeJSON(w, http.StatusCreated, ro.toProto())
}

func (s *Server) assignmentToProto(a *assignment) proto.Assignment {
	pa := proto.Assignment{ID: a.ID, Group: a.Group, Expires: a.Expires, Created: a.Created}
	if u := s.users[a.UserID]; u != nil {
		pa.User = u.Login
	}
	if r := s.roles[a.RoleID]; r != nil {
		pa.Role = r.Name
	}
	if c := s.clusters[a.ClusterID]; c != nil {
		pa.Cluster = c.Name
	}
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

func (s *Server) lookupRole(ref string) *role {
	if r := s.roles[ref]; r != nil {
		return r
	}
	return s.rolesByName[ref]
}

func (s *Server) lookupCluster(ref string) *cluster {
	if c := s.clusters[ref]; c != nil {
		return c
	}
	return s.clustersByName[ref]
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
	a := &assignment{ID: newID("asg"), Group: req.Group, Expires: req.Expires, Created: now, CreatedBy: p.user.Login}
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
	if !s.commit(w, "create assignment", func(tx store.Tx) error {
		if err := store.Put(tx, store.Assignments, a.ID, a); err != nil {
			return err
		}
		return s.recordChange(tx, p.user.Login, "assignment.create", a.ID, a)
	}) {
		return
	}
	s.addAssignmentLocked(a)
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
	s.removeAssignmentLocked(a)
	w.WriteHeader(http.StatusNoContent)
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

// ---- backup ----

// handleBackup streams a consistent snapshot of the store: the bbolt file
// as of one moment, while writes go on. A failure after the first byte
// aborts the response, so the client sees a broken transfer rather than a
// short file.
func (s *Server) handleBackup(w http.ResponseWriter, r *http.Request, p principal) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="coordinator.db"`)
	w.Header().Set("Cache-Control", "no-store")
	start := time.Now()
	// A large store on a slow link takes longer than the write timeout:
	// each chunk gets its own deadline instead.
	n, err := s.st.BackupTo(&deadlineWriter{w: w, extend: s.longLived(w)})
	if err != nil {
		s.log.Error("backup failed", "actor", p.user.Login, "bytes", n, "err", err)
		if n == 0 {
			writeProblem(w, http.StatusInternalServerError, proto.CodeInternal, "backup: "+err.Error(), "")
			return
		}
		panic(http.ErrAbortHandler)
	}
	s.log.Info("backup", "actor", p.user.Login, "bytes", n, "duration", time.Since(start))
}

// deadlineWriter calls extend before each write to w.
type deadlineWriter struct {
	w      io.Writer
	extend func()
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.extend()
	return d.w.Write(p)
}
