// Package proto defines every message that crosses a process boundary in
// clustral: the coordinator's JSON API, the login flow, node and agent
// registration, and the network map stream. Nothing else in the project
// defines a wire type.
//
// The API is versioned by path (/api/v1/...). Fields are only ever added;
// a field's meaning never changes within a version. JSON field names are
// snake_case and stable.
package proto

import (
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"time"
)

// APIVersion is the path prefix of the coordinator's API.
const APIVersion = "/api/v1"

// Header names shared by the parts.
const (
	// HeaderErrorCode carries the machine-readable error code on the proxy
	// path (text/plain bodies) and in coordinator problem responses.
	HeaderErrorCode = "X-Clustral-Error-Code"
	// HeaderRequestID carries the correlation id of a request.
	HeaderRequestID = "X-Clustral-Request-Id"
	// HeaderReplica names the coordinator replica that answered, on the
	// answers of a coordinator that shares its store with other replicas.
	HeaderReplica = "X-Clustral-Replica"
)

// requestIDRE is the form of a correlation id (HeaderRequestID): 8 to 64
// letters, digits, '_', '.' or '-'.
var requestIDRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9_.-]{8,64}$`) })

// ValidRequestID reports whether id has the form of a correlation id:
// 8 to 64 letters, digits, '_', '.' or '-'. The coordinator replaces a
// caller's id of any other form with one of its own, and the agent's
// ids have it.
func ValidRequestID(id string) bool { return requestIDRE().MatchString(id) }

// MaxBodyBytes bounds every request body the coordinator accepts.
const MaxBodyBytes = 1 << 20

// ErrorCode is a stable machine-readable error code. It appears in the
// X-Clustral-Error-Code header and in Problem.Code.
type ErrorCode string

const (
	CodeBadRequest       ErrorCode = "BAD_REQUEST"
	CodeUnauthenticated  ErrorCode = "UNAUTHENTICATED"
	CodeSessionExpired   ErrorCode = "SESSION_EXPIRED"
	CodeForbidden        ErrorCode = "FORBIDDEN"
	CodeNotFound         ErrorCode = "NOT_FOUND"
	CodeConflict         ErrorCode = "CONFLICT"
	CodeTooLarge         ErrorCode = "BODY_TOO_LARGE"
	CodeLoginPending     ErrorCode = "LOGIN_PENDING"
	CodeLoginExpired     ErrorCode = "LOGIN_EXPIRED"
	CodeLoginConsumed    ErrorCode = "LOGIN_HANDLE_USED"
	CodeLoginFailed      ErrorCode = "LOGIN_FAILED"
	CodeTooManyLogins    ErrorCode = "TOO_MANY_PENDING_LOGINS"
	CodeInvalidJoinToken ErrorCode = "INVALID_JOIN_TOKEN"
	CodeAddressExhausted ErrorCode = "ADDRESS_POOL_EXHAUSTED"
	CodeQuotaExceeded    ErrorCode = "QUOTA_EXCEEDED"
	CodeInternal         ErrorCode = "INTERNAL"

	// Proxy-path codes (agent).
	CodeNoRoleAssignment    ErrorCode = "NO_ROLE_ASSIGNMENT"
	CodeAccessExpired       ErrorCode = "ACCESS_EXPIRED"
	CodeOutsideTimeWindow   ErrorCode = "OUTSIDE_TIME_WINDOW"
	CodeNamespaceNotAllowed ErrorCode = "NAMESPACE_NOT_ALLOWED"
	CodeResourceNotAllowed  ErrorCode = "RESOURCE_NOT_ALLOWED"
	CodeVerbNotAllowed      ErrorCode = "VERB_NOT_ALLOWED"
	CodeDeviceRevoked       ErrorCode = "DEVICE_REVOKED"
	CodeUnknownPeer         ErrorCode = "UNKNOWN_PEER"
	CodeRateLimited         ErrorCode = "RATE_LIMITED"
	CodeUpstreamUnavailable ErrorCode = "UPSTREAM_UNAVAILABLE"
	CodeBadUpgrade          ErrorCode = "BAD_UPGRADE"
	CodeRequestTimeout      ErrorCode = "REQUEST_TIMEOUT"
	// CodeRecordingUnavailable refuses or ends a session whose role
	// requires a recording that the agent cannot write.
	CodeRecordingUnavailable ErrorCode = "RECORDING_UNAVAILABLE"
)

// Problem is an RFC 7807 problem document (application/problem+json), the
// body of every error the coordinator's API returns.
type Problem struct {
	Type   string    `json:"type,omitempty"`
	Title  string    `json:"title"`
	Status int       `json:"status"`
	Detail string    `json:"detail,omitempty"`
	Code   ErrorCode `json:"code"`
	// Hint says how to fix the problem, for the CLI's hint line.
	Hint string `json:"hint,omitempty"`
	// Field names the request's field that caused the problem, as its
	// JSON names it (description, restrictions.verbs), when one did, so a
	// form can show the problem beside it.
	Field string `json:"field,omitempty"`
}

func (p *Problem) Error() string {
	if p.Detail != "" {
		return p.Detail
	}
	return p.Title
}

// ---- Login ----

// LoginStartRequest is the body of POST /api/v1/login/start. The CLI keeps
// a random code verifier (RFC 7636) to itself and sends only its S256
// challenge: the session of the login is handed out only to a caller that
// presents the verifier, so the auth URL and the poll handle alone are
// worth nothing.
//
// With RedirectURI set (the default flow, RFC 8252 §7.3) the coordinator
// sends the browser back to that loopback address with a one-time code,
// which the CLI exchanges at /api/v1/login/exchange. Without it (headless,
// clustral login --no-browser) the browser shows a confirmation page naming
// the device, and the session is issued only after the person types the
// UserCode the terminal shows.
type LoginStartRequest struct {
	// CodeChallenge is BASE64URL(SHA-256(verifier)), 43 characters.
	CodeChallenge string `json:"code_challenge"`
	// CodeChallengeMethod must be "S256".
	CodeChallengeMethod string `json:"code_challenge_method"`
	// RedirectURI is the CLI's loopback listener:
	// http://127.0.0.1:PORT/PATH or http://[::1]:PORT/PATH, nothing else.
	RedirectURI string `json:"redirect_uri,omitempty"`
	// Device describes the machine, for the confirmation page.
	Device LoginDevice `json:"device"`
}

// LoginDevice is what the confirmation page says about the machine that
// started a headless login. It is what that machine claims; the page also
// shows the address the request came from.
type LoginDevice struct {
	Hostname string `json:"hostname,omitempty"`
	OS       string `json:"os,omitempty"`
}

// CodeChallengeS256 is the only code challenge method accepted.
const CodeChallengeS256 = "S256"

// LoginStartResponse answers POST /api/v1/login/start.
type LoginStartResponse struct {
	// AuthURL is the URL the user opens in a browser.
	AuthURL string `json:"auth_url"`
	// Handle names the login in polls. Alone it yields nothing: a poll
	// must also carry the code verifier.
	Handle    string    `json:"handle"`
	ExpiresAt time.Time `json:"expires_at"`
	// PollInterval is how often the CLI should poll.
	PollInterval Duration `json:"poll_interval"`
	// UserCode is set in a headless login: the terminal shows it and the
	// person types it into the confirmation page (e.g. "BCDF-GHJK").
	UserCode string `json:"user_code,omitempty"`
}

// LoginPollRequest is the body of POST /api/v1/login/poll. The coordinator
// answers 202 with a Problem (LOGIN_PENDING) until the login is complete;
// in a headless login it then answers 200 with a Session exactly once, and
// later polls get 410. A loopback login never yields its session here (the
// poll only reports failure or expiry): the CLI exchanges the code its
// loopback listener received. A poll with the wrong verifier ends the
// login.
type LoginPollRequest struct {
	Handle       string `json:"handle"`
	CodeVerifier string `json:"code_verifier"`
}

// LoginExchangeRequest is the body of POST /api/v1/login/exchange: the
// one-time code the browser brought to the CLI's loopback listener and the
// verifier of the login's code challenge. The answer is a Session.
type LoginExchangeRequest struct {
	Code         string `json:"code"`
	CodeVerifier string `json:"code_verifier"`
}

// TokenExchangeRequest is the body of POST /api/v1/login/token: a direct
// exchange of an ID token from the configured issuer, for automation.
type TokenExchangeRequest struct {
	IDToken string `json:"id_token"`
}

// Session is a coordinator session: a signed token and who it belongs to.
type Session struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	User      User      `json:"user"`
}

// User is a person known to the coordinator.
type User struct {
	ID       string    `json:"id"`
	Login    string    `json:"login"`
	Email    string    `json:"email"`
	Name     string    `json:"name,omitempty"`
	Groups   []string  `json:"groups,omitempty"`
	Admin    bool      `json:"admin,omitempty"`
	Disabled bool      `json:"disabled,omitempty"`
	Created  time.Time `json:"created,omitempty"`
	LastSeen time.Time `json:"last_seen,omitempty"`
}

// ---- Registration ----

// RegisterDeviceRequest is the body of POST /api/v1/devices, authenticated
// with a session token.
type RegisterDeviceRequest struct {
	PublicKey Key    `json:"public_key"`
	Hostname  string `json:"hostname,omitempty"`
}

// RegisterAgentRequest is the body of POST /api/v1/agents, authenticated
// with a cluster join token ("Authorization: Bearer <join token>").
type RegisterAgentRequest struct {
	PublicKey Key    `json:"public_key"`
	Hostname  string `json:"hostname,omitempty"`
	// CSR is a PEM certificate request for the agent's serving key. The
	// private key never leaves the agent.
	CSR string `json:"csr"`
}

// RegisterResponse answers a device or agent registration.
type RegisterResponse struct {
	NodeID string `json:"node_id"`
	// NodeToken authenticates the node's map stream. It is shown once and
	// stored hashed by the coordinator.
	NodeToken string         `json:"node_token"`
	Addresses []netip.Prefix `json:"addresses"`
	// Prefixes are the mesh's overlay ranges, to route them over a TUN
	// device.
	Prefixes []netip.Prefix `json:"prefixes,omitempty"`
	// Cluster is the agent's cluster name, for agents only.
	Cluster    string    `json:"cluster,omitempty"`
	MeshDomain string    `json:"mesh_domain"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
	// Certificate is the agent's serving certificate chain (PEM), for
	// agents only.
	Certificate string `json:"certificate,omitempty"`
	// CABundle is the mesh CA (PEM).
	CABundle string `json:"ca_bundle"`
	// STUN is the host:port of the coordinator's UDP endpoint-discovery
	// service (see Probe), empty when it runs none.
	STUN string `json:"stun,omitempty"`
}

// ---- Admin API ----

// Cluster is a Kubernetes cluster registered with the coordinator.
type Cluster struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Labels  map[string]string `json:"labels,omitempty"`
	Created time.Time         `json:"created"`
	Agents  []Agent           `json:"agents,omitempty"`
}

// Agent is one agent node of a cluster.
type Agent struct {
	NodeID    string         `json:"node_id"`
	Hostname  string         `json:"hostname"`
	Addresses []netip.Prefix `json:"addresses"`
	Online    bool           `json:"online"`
	// LastSeen is when the agent's map stream was last open or its last
	// status came in.
	LastSeen time.Time `json:"last_seen,omitzero"`
	// Status is the agent's last report (PUT AgentStatusPath), nil when
	// none came in since the coordinator started; its Streams are left
	// out (see LiveSessionsPath). Reported is when it came in.
	Status   *AgentStatus `json:"status,omitempty"`
	Reported time.Time    `json:"reported,omitzero"`
	// Streams counts the agent's live sessions in that report.
	Streams int `json:"streams"`
	// Relayed reports that the agent published no endpoint, so devices
	// reach it only through the coordinator's relay.
	Relayed bool `json:"relayed"`
}

// CreateClusterRequest is the body of POST /api/v1/clusters.
type CreateClusterRequest struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

// CreateClusterResponse returns the new cluster and its join token, shown
// once.
type CreateClusterResponse struct {
	Cluster   Cluster `json:"cluster"`
	JoinToken string  `json:"join_token"`
}

// Role maps to the Kubernetes identity impersonated for its holders.
type Role struct {
	ID          string   `json:"id"`
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Groups      []string `json:"groups"`
	// KubeUser, when set, replaces the user's login as Impersonate-User.
	KubeUser string `json:"kube_user,omitempty"`
	// Restrictions, when set, narrow what the role allows.
	Restrictions *Restrictions `json:"restrictions,omitempty"`
	// ApproverGroups are OIDC groups whose members may approve access
	// requests for this role (besides administrators).
	ApproverGroups []string `json:"approver_groups,omitempty"`
	// Admin makes holders of this role clustral administrators.
	Admin bool `json:"admin,omitempty"`
	// Recording says whether the agent records the exec and attach
	// sessions this role allows; empty means off.
	Recording RecordingPolicy `json:"recording,omitempty"`
	// RecordStdin adds what the user types to recordings. Off by
	// default: stdin carries passwords typed at prompts.
	RecordStdin bool `json:"record_stdin,omitempty"`
}

// Assignment gives a user (or an OIDC group) a role on a cluster, or on
// every cluster whose labels match ClusterSelector.
type Assignment struct {
	ID      string `json:"id"`
	User    string `json:"user,omitempty"`
	Group   string `json:"group,omitempty"`
	Role    string `json:"role"`
	Cluster string `json:"cluster,omitempty"`
	// ClusterSelector matches clusters by labels (all must match).
	ClusterSelector map[string]string `json:"cluster_selector,omitempty"`
	// Request is the access request this assignment grants, if any.
	Request string     `json:"request,omitempty"`
	Expires *time.Time `json:"expires,omitempty"`
	Created time.Time  `json:"created"`
}

// ---- Network map ----

// NodeKind tells devices from agents.
type NodeKind string

const (
	KindDevice NodeKind = "device"
	KindAgent  NodeKind = "agent"
)

// MapMessage is one message of the network map stream
// (GET /api/v1/map, newline-delimited JSON, authenticated with the node
// token). The first message has Snapshot set and carries the whole map.
// Every later message has Version = previous Version + 1 and carries only
// what changed. A node that sees a gap reconnects and gets a new snapshot.
// Messages with KeepAlive set carry nothing and do not advance Version.
type MapMessage struct {
	Version   uint64 `json:"version"`
	Snapshot  bool   `json:"snapshot,omitempty"`
	KeepAlive bool   `json:"keep_alive,omitempty"`

	// Self, MeshDomain and CABundle are set on snapshots and when they change.
	Self       *Peer  `json:"self,omitempty"`
	MeshDomain string `json:"mesh_domain,omitempty"`
	CABundle   string `json:"ca_bundle,omitempty"`
	// Certificate is an agent's serving certificate (PEM), for the key of
	// its registration's certificate request. It is set on an agent's
	// snapshots and, while its stream stays open, on a message of its own
	// well before the current certificate expires. Agent certificates are
	// short-lived and never revoked: a removed agent is no longer renewed.
	Certificate string `json:"certificate,omitempty"`

	// Peers are added or replaced whole, keyed by Key. On a snapshot they are
	// the complete peer set.
	Peers []Peer `json:"peers,omitempty"`
	// Removed lists the keys of peers that are gone.
	Removed []Key `json:"removed,omitempty"`
	// EndStreams, on an agent's stream only, names live streams
	// (LiveStream.ID) an administrator ended: the agent closes them.
	EndStreams []string `json:"end_streams,omitempty"`
}

// Peer is one node as another node sees it.
type Peer struct {
	Key       Key              `json:"key"`
	NodeID    string           `json:"node_id"`
	Kind      NodeKind         `json:"kind"`
	Hostname  string           `json:"hostname,omitempty"`
	Addresses []netip.Prefix   `json:"addresses"`
	Endpoints []netip.AddrPort `json:"endpoints,omitempty"`
	Online    bool             `json:"online"`
	// Cluster is set for agents.
	Cluster string `json:"cluster,omitempty"`
	// Identity is set for devices in an agent's map: who the device belongs
	// to and what they may do on the agent's cluster.
	Identity *Identity `json:"identity,omitempty"`
}

// Identity is what an agent knows about the user behind a device peer.
type Identity struct {
	UserID string   `json:"user_id"`
	Login  string   `json:"login"`
	Email  string   `json:"email,omitempty"`
	Groups []string `json:"groups,omitempty"`
	// Roles are the roles that apply on the agent's cluster.
	Roles []RoleGrant `json:"roles"`
	// Expires is when the device's session ends.
	Expires time.Time `json:"expires,omitzero"`
}

// RoleGrant is a role as it applies to one user on one cluster.
type RoleGrant struct {
	Role     string     `json:"role"`
	Groups   []string   `json:"groups"`
	KubeUser string     `json:"kube_user,omitempty"`
	Expires  *time.Time `json:"expires,omitempty"`
	// Source says why the role applies: "user", "group:<name>" or "grant:<access request id>".
	Source string `json:"source,omitempty"`
	// Restrictions narrow what the role allows; nil means none.
	Restrictions *Restrictions `json:"restrictions,omitempty"`
	// Recording and RecordStdin are the role's recording policy (see
	// Role). A session allowed by several grants is recorded by the
	// strongest policy among them, with stdin if any of them asks.
	Recording   RecordingPolicy `json:"recording,omitempty"`
	RecordStdin bool            `json:"record_stdin,omitempty"`
}

// Whoami answers GET /api/v1/whoami: the caller, their session and the
// clusters they may reach now with their roles there.
type Whoami struct {
	User           User               `json:"user"`
	SessionExpires time.Time          `json:"session_expires"`
	Clusters       []ReachableCluster `json:"clusters"`
	// Requestable names every cluster the caller may request access to.
	Requestable []string `json:"requestable,omitempty"`
}

// ReachableCluster is a cluster the caller may reach, with their roles.
type ReachableCluster struct {
	Name  string      `json:"name"`
	Roles []RoleGrant `json:"roles"`
}

// Restrictions narrow what a role allows on a cluster. The agent enforces
// them before impersonating; the cluster's RBAC still judges whatever they
// let through. An empty list places no limit of its kind. A request is
// allowed by a role only if it matches every non-empty list.
//
// Restrictions that limit what a role may touch (any list but
// TimeWindows) are an allow-list in two more ways, whatever the lists
// say otherwise:
//   - the sensitive subresources (see SensitiveSubresource: exec, attach,
//     portforward, proxy, ephemeralcontainers, serviceaccounts/token) are
//     allowed only where Resources names them, as "pods/exec" or
//     "*/exec"; neither "*" nor an empty Resources includes them;
//   - non-resource URLs (/metrics, /logs/, /debug/pprof/) are allowed
//     only where NonResourceURLs lists them; discovery (/api, /apis,
//     /version, /openapi) is always allowed so that kubectl works.
//
// Restrictions with only TimeWindows limit when a role applies, not what
// it allows.
type Restrictions struct {
	// Namespaces the role may touch. Cluster-scoped requests are refused
	// when Namespaces is set, unless it contains "" (cluster scope).
	Namespaces []string `json:"namespaces,omitempty"`
	// APIGroups by name; "" is the core group, "*" any group.
	APIGroups []string `json:"api_groups,omitempty"`
	// Resources by plural name, with an optional subresource, as the
	// apiserver names them ("pods", "pods/log", "nodes/proxy",
	// "deployments/scale"); "*" any resource and any subresource but the
	// sensitive ones, "*/scale" that subresource of any resource.
	Resources []string `json:"resources,omitempty"`
	// Verbs as Kubernetes names them: get, list, watch, create, update,
	// patch, delete, deletecollection; "*" any verb.
	Verbs []string `json:"verbs,omitempty"`
	// ResourceNames the role may touch by name.
	ResourceNames []string `json:"resource_names,omitempty"`
	// NonResourceURLs the role may request besides discovery, as RBAC
	// writes them: a path ("/metrics"), a path prefix ending in "*"
	// ("/logs/*"), or "*" for any. Verbs apply to them too, with the
	// lowercase HTTP method as the verb: "get" allows GET.
	NonResourceURLs []string `json:"non_resource_urls,omitempty"`
	// TimeWindows when the role applies; outside all of them it does not.
	TimeWindows []TimeWindow `json:"time_windows,omitempty"`
}

// TimeWindow is a weekly window in a named time zone, e.g. Mon-Fri
// 09:00-18:00 Europe/Berlin. End before Start spans midnight.
type TimeWindow struct {
	// Days are three-letter English day names ("mon" ... "sun"); empty
	// means every day. A window spanning midnight belongs to the day it
	// starts on.
	Days []string `json:"days,omitempty"`
	// Start and End are "HH:MM" (24h) local times.
	Start string `json:"start"`
	End   string `json:"end"`
	// TimeZone is an IANA zone name; empty means UTC.
	TimeZone string `json:"time_zone,omitempty"`
}

// String formats w the way `clustral roles --window` reads it, e.g.
// "mon,tue,wed 09:00-18:00 Europe/Berlin" or "daily 22:00-06:00 UTC".
func (w TimeWindow) String() string {
	days := "daily"
	if len(w.Days) > 0 {
		days = strings.Join(w.Days, ",")
	}
	tz := w.TimeZone
	if tz == "" {
		tz = "UTC"
	}
	return days + " " + w.Start + "-" + w.End + " " + tz
}

// Limit is one line of a role's restrictions in words: what it limits
// and to what, e.g. {"Namespaces", "dev, staging"} or {"Window",
// "mon-fri 09:00-18:00 Europe/Berlin"}.
type Limit struct {
	Name, Value string
}

// Limits describes rs line by line, the way `clustral roles show` and the
// web console show them: each non-empty list, then each time window. A
// nil or empty rs has no limits.
func (rs *Restrictions) Limits() []Limit {
	if rs == nil {
		return nil
	}
	var out []Limit
	for _, l := range []struct {
		k string
		v []string
	}{{"Namespaces", rs.Namespaces}, {"API groups", rs.APIGroups}, {"Resources", rs.Resources}, {"Verbs", rs.Verbs},
		{"Names", rs.ResourceNames}, {"Non-resource URLs", rs.NonResourceURLs}} {
		if len(l.v) > 0 {
			out = append(out, Limit{l.k, strings.Join(l.v, ", ")})
		}
	}
	for _, w := range rs.TimeWindows {
		out = append(out, Limit{"Window", w.String()})
	}
	return out
}

// Access request states.
const (
	RequestPending  = "pending"
	RequestApproved = "approved"
	RequestDenied   = "denied"
	RequestExpired  = "expired"
	RequestRevoked  = "revoked"
)

// AccessRequest is a just-in-time request for a role on a cluster.
type AccessRequest struct {
	ID      string `json:"id"`
	User    string `json:"user"`
	Role    string `json:"role"`
	Cluster string `json:"cluster"`
	Reason  string `json:"reason"`
	// Duration is how long the grant should last once approved.
	Duration Duration  `json:"duration"`
	State    string    `json:"state"`
	Created  time.Time `json:"created"`
	// PendingUntil is when an undecided request expires.
	PendingUntil time.Time `json:"pending_until"`
	DecidedBy    string    `json:"decided_by,omitempty"`
	DecidedAt    time.Time `json:"decided_at,omitzero"`
	// DecisionReason is the approver's or denier's note.
	DecisionReason string `json:"decision_reason,omitempty"`
	// GrantExpires is when an approved grant ends.
	GrantExpires *time.Time `json:"grant_expires,omitempty"`
}

// CreateAccessRequest is the body of POST /api/v1/access-requests.
type CreateAccessRequest struct {
	Role     string   `json:"role"`
	Cluster  string   `json:"cluster"`
	Duration Duration `json:"duration"`
	Reason   string   `json:"reason"`
}

// AccessDecision is the body of approve, deny and revoke calls.
type AccessDecision struct {
	// Duration, on approval, shortens the grant; zero keeps the request's.
	Duration Duration `json:"duration,omitempty"`
	Reason   string   `json:"reason,omitempty"`
}

// SessionKind tells a web console's browser session from a CLI's.
type SessionKind string

// SessionConsole is the kind of a web console's browser session; a CLI's
// session has the empty kind.
const SessionConsole SessionKind = "console"

// SessionInfo is one of the caller's sessions (GET /api/v1/sessions).
type SessionInfo struct {
	// ID names the session in DELETE /api/v1/sessions/{id}; it is not
	// the session's secret.
	ID      string      `json:"id"`
	Kind    SessionKind `json:"kind,omitempty"`
	Created time.Time   `json:"created"`
	Expires time.Time   `json:"expires"`
	// Current is true for the session the request came with.
	Current bool `json:"current,omitempty"`
	// Devices counts the devices registered under the session.
	Devices int `json:"devices"`
}

// Device is a user's registered device.
type Device struct {
	ID        string         `json:"id"`
	User      string         `json:"user"`
	Hostname  string         `json:"hostname"`
	Key       Key            `json:"key"`
	Addresses []netip.Prefix `json:"addresses"`
	Online    bool           `json:"online"`
	Created   time.Time      `json:"created"`
	Expires   time.Time      `json:"expires"`
}

// ClusterLabels is the body of PUT /api/v1/clusters/{cluster}/labels.
type ClusterLabels struct {
	Labels map[string]string `json:"labels"`
}

// JoinToken answers POST /api/v1/clusters/{cluster}/rotate-token.
type JoinToken struct {
	Cluster   string `json:"cluster"`
	JoinToken string `json:"join_token"`
}
