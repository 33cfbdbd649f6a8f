package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/clustral/clustral/coordinator/console"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// Handler returns the coordinator's HTTP API. The route table names each
// route's authentication by the wrapper around its handler:
//
//   - public: no credential. The ones an attacker could use to guess or
//     to load the identity provider are also rate limited per source
//     address (perSource).
//   - user: a logged-in user's session token, checked when the headers
//     arrive and again once the body is read (authSessionBody).
//   - admin: user, and the user is an administrator.
//   - node: a registered device's or agent's node token; agent: a node
//     token of an agent.
//   - deviceOwner: user for a device registration, checked when the
//     headers arrive and again at the write (registerNode); joinToken: a
//     cluster's join token for an agent registration, checked the same
//     way. Both cost the source a rate-limit token when refused.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	v := proto.APIVersion
	// With a metrics address, /metrics is served there only. The ops
	// routes (/healthz, /readyz, /metrics) are public.
	s.opsRoutes(mux, s.cfg.MetricsListen == "")
	mux.HandleFunc("GET "+v+"/info", s.public(s.handleInfo))
	mux.HandleFunc("GET "+proto.RelayPath+"/stats", s.public(s.handleRelayStats))
	mux.HandleFunc("GET "+v+"/admin/backup", s.admin(s.handleBackup))

	// login.go
	mux.HandleFunc("POST "+v+"/login/start", s.public(s.perSource("login_start", s.handleLoginStart)))
	mux.HandleFunc("POST "+v+"/login/poll", s.public(s.handleLoginPoll))
	mux.HandleFunc("POST "+v+"/login/token", s.public(s.perSource("login_token", s.handleLoginToken)))
	mux.HandleFunc("POST "+v+"/login/exchange", s.public(s.perSource("login_exchange", s.handleLoginExchange)))
	mux.HandleFunc("GET /oidc/callback", s.public(s.perSource("callback", s.handleCallback)))
	mux.HandleFunc("POST /oidc/confirm", s.public(s.perSource("confirm", s.handleConfirm)))
	mux.HandleFunc("GET "+v+"/whoami", s.user(s.handleWhoami))
	mux.HandleFunc("DELETE "+v+"/session", s.user(s.handleLogout))
	mux.HandleFunc("GET "+v+"/sessions", s.user(s.handleListSessions))
	mux.HandleFunc("DELETE "+v+"/sessions/{id}", s.user(s.handleEndSession))

	// nodes.go, mapstream.go, relay.go
	mux.HandleFunc("POST "+v+"/devices", s.deviceOwner(s.handleRegisterDevice))
	mux.HandleFunc("POST "+v+"/agents", s.joinToken(s.handleRegisterAgent))
	mux.HandleFunc("DELETE "+v+"/nodes/self", s.node(s.handleDeregister))
	mux.HandleFunc("PUT "+v+"/nodes/self/endpoints", s.node(s.handleEndpoints))
	mux.HandleFunc("GET "+v+"/map", s.node(s.handleMap))
	mux.HandleFunc("PUT "+proto.AgentStatusPath, s.agent(s.handleAgentStatus))
	mux.HandleFunc("GET "+proto.LiveSessionsPath, s.admin(s.handleLiveSessions))
	mux.HandleFunc("POST "+proto.LiveSessionsPath+"/{id}/end", s.admin(s.handleEndLive))
	mux.HandleFunc("GET "+proto.RelayPath, s.node(s.handleRelay))

	// devices.go
	mux.HandleFunc("GET "+v+"/devices", s.user(s.handleListDevices))
	mux.HandleFunc("DELETE "+v+"/devices/{id}", s.user(s.handleRevokeDevice))

	// clusters.go
	mux.HandleFunc("GET "+v+"/clusters", s.admin(s.handleListClusters))
	mux.HandleFunc("POST "+v+"/clusters", s.admin(s.handleCreateCluster))
	mux.HandleFunc("GET "+v+"/clusters/{cluster}", s.admin(s.handleShowCluster))
	mux.HandleFunc("PUT "+v+"/clusters/{cluster}/labels", s.admin(s.handleLabelCluster))
	mux.HandleFunc("POST "+v+"/clusters/{cluster}/{action}", s.admin(s.handleClusterToken))
	mux.HandleFunc("DELETE "+v+"/clusters/{cluster}", s.admin(s.handleDeleteCluster))

	// roles.go
	mux.HandleFunc("GET "+v+"/roles", s.admin(s.handleListRoles))
	mux.HandleFunc("POST "+v+"/roles", s.admin(s.handleCreateRole))
	mux.HandleFunc("GET "+v+"/roles/{role}", s.admin(s.handleShowRole))
	mux.HandleFunc("PUT "+v+"/roles/{role}", s.admin(s.handleUpdateRole))
	mux.HandleFunc("DELETE "+v+"/roles/{role}", s.admin(s.handleDeleteRole))

	// assignments.go
	mux.HandleFunc("GET "+v+"/assignments", s.admin(s.handleListAssignments))
	mux.HandleFunc("POST "+v+"/assignments", s.admin(s.handleCreateAssignment))
	mux.HandleFunc("DELETE "+v+"/assignments/{id}", s.admin(s.handleDeleteAssignment))

	// users.go
	mux.HandleFunc("GET "+v+"/users", s.admin(s.handleListUsers))
	mux.HandleFunc("GET "+v+"/users/{user}", s.admin(s.handleShowUser))
	mux.HandleFunc("POST "+v+"/users/{user}/{action}", s.admin(s.handleUserState))

	// access.go
	mux.HandleFunc("POST "+v+"/access-requests", s.user(s.handleCreateRequest))
	mux.HandleFunc("GET "+v+"/access-requests", s.user(s.handleListRequests))
	mux.HandleFunc("POST "+v+"/access-requests/{id}/{action}", s.user(s.handleDecideRequest))

	// audit.go, checkpoint.go
	mux.HandleFunc("POST "+v+"/audit/events", s.agent(s.handleAuditIngest))
	mux.HandleFunc("GET "+v+"/audit/events", s.user(s.handleAuditQuery))
	mux.HandleFunc("GET "+v+"/audit/verify", s.admin(s.handleAuditVerify))
	mux.HandleFunc("POST "+v+"/audit/verify", s.admin(s.handleAuditVerify))
	mux.HandleFunc("POST "+v+"/audit/checkpoints", s.admin(s.handleAuditCheckpoint))
	mux.HandleFunc("GET "+v+"/audit/checkpoints/latest", s.admin(s.handleLatestCheckpoint))

	// Session recordings (recordings.go).
	mux.HandleFunc("PUT "+v+"/recordings/{id}", s.agent(s.handlePutRecording))
	mux.HandleFunc("PATCH "+v+"/recordings/{id}", s.agent(s.handleAppendRecording))
	mux.HandleFunc("GET "+v+"/recordings", s.admin(s.handleListRecordings))
	mux.HandleFunc("GET "+v+"/recordings/{id}", s.admin(s.handleGetRecording))

	// The web console at "/", on the API's origin: its pages call this
	// mux in process with the browser session (coordinator/console).
	console.New(console.Config{PublicURL: s.cfg.PublicURL, API: mux, SignIn: s.consoleSignIn, Exchange: s.consoleExchange,
		SignInTTL: s.cfg.LoginTTL, PerSource: s.perSource, Done: s.consoleDone, Logger: s.log}).Register(mux)

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		limit := int64(proto.MaxBodyBytes)
		if (r.Method == http.MethodPut || r.Method == http.MethodPatch) && strings.HasPrefix(r.URL.Path, v+"/recordings/") {
			limit = proto.MaxRecordingUpload
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		// Every request has a correlation id: the caller's, if it sent a
		// sane one, else a new one. It is echoed in the answer and in the
		// log line, so a CLI error can be matched with the server's log.
		id := r.Header.Get(proto.HeaderRequestID)
		if !proto.ValidRequestID(id) {
			id = newID("req")[4:]
		}
		w.Header().Set(proto.HeaderRequestID, id)
		if s.feed != nil {
			w.Header().Set(proto.HeaderReplica, s.replica)
		}
		start := time.Now() // the wall clock: s.now may be a test's
		sw := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		mux.ServeHTTP(sw, r)
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || r.URL.Path == "/metrics" {
			return
		}
		s.log.Debug("api", "request_id", id, "method", r.Method, "path", r.URL.Path, "status", sw.status, "duration", time.Since(start))
	})
}

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
//
// The helpers a handler calls with its http.ResponseWriter that return a
// bool, or a pointer that may be nil (decode, commit, check*, pathAction,
// authSession, roleFromPath and the like), answer the problem themselves
// when they fail: the handler just returns.
func writeProblem(w http.ResponseWriter, status int, code proto.ErrorCode, title, hint string) {
	writeProblemDoc(w, &proto.Problem{Status: status, Code: code, Title: title, Hint: hint})
}

// commit runs fn in one store transaction, for a handler that applies
// the change to memory only once it is stored. When the transaction fails
// commit answers the problem itself (500, see writeInternal) and returns
// false; nothing was stored. Called with s.mu held: the store's write,
// with its disk sync, under the global lock is deliberate, and its cost
// is written down at guarded.
func (s *Server) commit(w http.ResponseWriter, what string, fn func(store.Tx) error) bool {
	if err := s.store.Update(fn); err != nil {
		s.writeInternal(w, what, err, "")
		return false
	}
	return true
}

// writeInternal answers 500 for a failure of the coordinator's own (its
// store, its disk), titled "what: internal error" and naming the
// request's id. The error itself goes to the log, under that id, and
// never to the client: it can name files, buckets or records that are
// none of the caller's business.
func (s *Server) writeInternal(w http.ResponseWriter, what string, err error, hint string) {
	id := w.Header().Get(proto.HeaderRequestID)
	s.log.Error(what, "request_id", id, "err", err)
	title := what + ": internal error"
	if id != "" {
		title += " (request id " + id + " in the coordinator's log)"
	}
	writeProblem(w, http.StatusInternalServerError, proto.CodeInternal, title, hint)
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

// decode reads exactly one JSON object into v. On error it answers the
// problem itself (400 or 413) and returns false. It is strict: a field v does not have (a typo like
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
