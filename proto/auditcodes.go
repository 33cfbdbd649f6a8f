package proto

import "strings"

// AuditCode is the stable code of an audit event: two letters naming the
// area, three digits, and a severity suffix (I info, W warning, E error),
// e.g. AU001I. A code's meaning never changes; new events get new codes.
//
// This file is the catalogue of every code; docs/audit-codes.md is
// generated from it (go test ./proto -run TestAuditCodesDoc -update).
type AuditCode string

// Severity returns the code's severity suffix: "I", "W" or "E".
func (c AuditCode) Severity() string {
	if len(c) == 0 {
		return ""
	}
	return string(c[len(c)-1])
}

// AuditCategory groups audit codes.
type AuditCategory string

const (
	CategoryAuth       AuditCategory = "auth"
	CategorySession    AuditCategory = "session"
	CategoryDevice     AuditCategory = "device"
	CategoryAgent      AuditCategory = "agent"
	CategoryCluster    AuditCategory = "cluster"
	CategoryRole       AuditCategory = "role"
	CategoryAssignment AuditCategory = "assignment"
	CategoryUser       AuditCategory = "user"
	CategoryAccess     AuditCategory = "access"
	CategoryRequest    AuditCategory = "request"
	CategoryDenial     AuditCategory = "denial"
	CategoryAudit      AuditCategory = "audit"
)

// AuditCategories lists every category in catalogue order.
var AuditCategories = []AuditCategory{CategoryAuth, CategorySession, CategoryDevice, CategoryAgent, CategoryCluster,
	CategoryRole, CategoryAssignment, CategoryUser, CategoryAccess, CategoryRequest, CategoryDenial, CategoryAudit}

// The codes.
const (
	AuditLoginBrowser     AuditCode = "AU001I"
	AuditLoginToken       AuditCode = "AU002I"
	AuditLoginFailed      AuditCode = "AU003W"
	AuditIDTokenRefused   AuditCode = "AU004W"
	AuditLoginUnbound     AuditCode = "AU005W"
	AuditLoginCollision   AuditCode = "AU006W"
	AuditConsoleSignIn    AuditCode = "AU007I"
	AuditSessionRevoked   AuditCode = "SE001I"
	AuditSessionEnded     AuditCode = "SE002I"
	AuditDeviceRegistered AuditCode = "DV001I"
	AuditDeviceLeft       AuditCode = "DV002I"
	AuditDeviceRevoked    AuditCode = "DV003W"
	AuditDeviceConnected  AuditCode = "DV004I"
	AuditDeviceGone       AuditCode = "DV005I"
	AuditAgentRegistered  AuditCode = "AG001I"
	AuditAgentLeft        AuditCode = "AG002I"
	AuditAgentConnected   AuditCode = "AG003I"
	AuditAgentGone        AuditCode = "AG004W"
	AuditAgentRefused     AuditCode = "AG005W"
	AuditEventsDropped    AuditCode = "AG006E"
	AuditAgentClockSkew   AuditCode = "AG007W"
	AuditClusterCreated   AuditCode = "CL001I"
	AuditClusterLabeled   AuditCode = "CL002I"
	AuditTokenRotated     AuditCode = "CL003W"
	AuditTokenRevoked     AuditCode = "CL004W"
	AuditClusterDeleted   AuditCode = "CL005W"
	AuditRoleCreated      AuditCode = "RL001I"
	AuditRoleUpdated      AuditCode = "RL002I"
	AuditRoleDeleted      AuditCode = "RL003W"
	AuditAssigned         AuditCode = "AS001I"
	AuditUnassigned       AuditCode = "AS002I"
	AuditAssignExpired    AuditCode = "AS003I"
	AuditUserDisabled     AuditCode = "US001W"
	AuditUserEnabled      AuditCode = "US002I"
	AuditAccessRequested  AuditCode = "AR001I"
	AuditAccessApproved   AuditCode = "AR002I"
	AuditAccessDenied     AuditCode = "AR003W"
	AuditAccessRevoked    AuditCode = "AR004W"
	AuditAccessExpired    AuditCode = "AR005I"
	AuditLiveEnded        AuditCode = "AR006W"
	AuditRequest          AuditCode = "RQ001I"
	AuditRequestFailed    AuditCode = "RQ002W"
	AuditStreamStarted    AuditCode = "RQ003I"
	AuditStreamEnded      AuditCode = "RQ004I"
	AuditRecordingRescued AuditCode = "RQ005W"
	AuditProxyDenied      AuditCode = "DN001W"
	AuditAPIDenied        AuditCode = "DN002W"
	AuditCheckpointExport AuditCode = "AL001I"
	AuditEventsLost       AuditCode = "AL002E"
	AuditExportFailing    AuditCode = "AL003W"
	AuditExportRecovered  AuditCode = "AL004I"
	AuditExportGap        AuditCode = "AL005E"
	AuditRecordingPruned  AuditCode = "AL006I"
)

// AuditCodeInfo describes one code in the catalogue.
type AuditCodeInfo struct {
	Code        AuditCode
	Category    AuditCategory
	Description string
}

// AuditCodes is the catalogue: every audit code, in order.
var AuditCodes = []AuditCodeInfo{
	{AuditLoginBrowser, CategoryAuth, "A user logged in through the browser (OIDC authorization code flow). Metadata: groups."},
	{AuditLoginToken, CategoryAuth, "A user logged in by exchanging an ID token (clustral login --id-token-file). Metadata: groups."},
	{AuditLoginFailed, CategoryAuth, "A browser login failed: the identity provider refused, the code exchange or the ID token check failed, or the user is disabled. Metadata: reason. Failures from one source are aggregated: the first in a minute is stored at once, the rest as one event with Metadata count, first, last (reason is the last one's)."},
	{AuditIDTokenRefused, CategoryAuth, "An ID token presented for direct exchange was refused (issuer, audience, expiry, signature), or its user may not log in. Metadata: reason. Failures from one source are aggregated: the first in a minute is stored at once, the rest as one event with Metadata count, first, last (reason is the last one's)."},
	{AuditLoginUnbound, CategoryAuth, "A browser login was signed in at the identity provider but never bound to the machine that started it, so no session was issued: the confirmation page was declined, the code was typed wrong too often, a poll or code exchange came with the wrong verifier, or it expired before the confirmation or the loopback exchange (for example because the link was opened on another machine). Metadata: reason, hostname, os, source, started."},
	{AuditLoginCollision, CategoryAuth, "A login was refused because its login claim is already another user's login (another subject at the identity provider); logins are unique. Actor: the login; object: the user who holds it. Metadata: subject, login, holder."},
	{AuditConsoleSignIn, CategoryAuth, "A user signed in to the web console through the identity provider: a browser session was issued, bound to the browser that started the sign-in. Metadata: groups."},
	{AuditSessionRevoked, CategorySession, "A user logged out: the session and every device under it were revoked. Metadata: devices, kind (console when a browser session signed out of the web console)."},
	{AuditSessionEnded, CategorySession, "A user ended one of their sessions by its id (DELETE /api/v1/sessions/{id}, the web console's Sessions list), with every device under it. Metadata: kind (console for a browser session), devices."},
	{AuditDeviceRegistered, CategoryDevice, "A device registered its WireGuard key (clustral up). Metadata: key, hostname."},
	{AuditDeviceLeft, CategoryDevice, "A device deregistered itself (clustral down)."},
	{AuditDeviceRevoked, CategoryDevice, "A user or an administrator revoked a device. Metadata: hostname."},
	{AuditDeviceConnected, CategoryDevice, "A device opened its network map stream."},
	{AuditDeviceGone, CategoryDevice, "A device's network map stream closed."},
	{AuditAgentRegistered, CategoryAgent, "An agent registered with its cluster's join token. Metadata: key, hostname."},
	{AuditAgentLeft, CategoryAgent, "An agent deregistered itself (shutdown)."},
	{AuditAgentConnected, CategoryAgent, "An agent opened its network map stream."},
	{AuditAgentGone, CategoryAgent, "An agent's network map stream closed."},
	{AuditAgentRefused, CategoryAgent, "An agent registration was refused: missing, invalid or revoked join token. Failures from one source are aggregated: the first in a minute is stored at once, the rest as one event with Metadata count, first, last (reason is the last one's)."},
	{AuditEventsDropped, CategoryAgent, "An agent's audit spool was full and request events were dropped. Metadata: dropped, first, last (times)."},
	{AuditAgentClockSkew, CategoryAgent, "An agent sent events dated more than 5 minutes ahead of the coordinator's clock, or before 2000. Each such event was stored with the time the coordinator received it, and the agent's time in its metadata as agent_time. Metadata: agent, events, max_skew."},
	{AuditClusterCreated, CategoryCluster, "An administrator registered a cluster. Metadata: name."},
	{AuditClusterLabeled, CategoryCluster, "An administrator changed a cluster's labels."},
	{AuditTokenRotated, CategoryCluster, "An administrator rotated a cluster's join token; the old one no longer registers agents. Metadata: agents_removed."},
	{AuditTokenRevoked, CategoryCluster, "An administrator revoked a cluster's join token; every agent of the cluster left every map. Metadata: agents_removed."},
	{AuditClusterDeleted, CategoryCluster, "An administrator deleted a cluster. Metadata: name."},
	{AuditRoleCreated, CategoryRole, "An administrator created a role."},
	{AuditRoleUpdated, CategoryRole, "An administrator changed a role (groups, restrictions, approvers)."},
	{AuditRoleDeleted, CategoryRole, "An administrator deleted a role and its assignments. Metadata: name, assignments."},
	{AuditAssigned, CategoryAssignment, "An administrator assigned a role to a user or group on a cluster or cluster selector."},
	{AuditUnassigned, CategoryAssignment, "An administrator removed an assignment."},
	{AuditAssignExpired, CategoryAssignment, "An assignment reached its expiry and was removed."},
	{AuditUserDisabled, CategoryUser, "An administrator disabled a user: sessions and devices revoked. Metadata: login, sessions, devices."},
	{AuditUserEnabled, CategoryUser, "An administrator enabled a user. Metadata: login."},
	{AuditAccessRequested, CategoryAccess, "A user requested just-in-time access. Metadata: role, cluster, duration, reason."},
	{AuditAccessApproved, CategoryAccess, "An approver approved an access request. Metadata: reason."},
	{AuditAccessDenied, CategoryAccess, "An approver denied an access request. Metadata: reason."},
	{AuditAccessRevoked, CategoryAccess, "An approver revoked an approved access request before it expired. Metadata: reason."},
	{AuditAccessExpired, CategoryAccess, "An access request expired: pending too long, or its grant ran out."},
	{AuditLiveEnded, CategoryAccess, "An administrator ended a user's live session (a watch, followed logs, exec, attach or port-forward) from the console's Live page, clustral sessions end or the API; the agent closes it within a second (an agent whose map stream is not open gets the end when it reconnects). Actor: the administrator; object: the user. Correlation: the stream's. Metadata: kind, cluster, agent, namespace, name, path."},
	{AuditRequest, CategoryRequest, "A Kubernetes request went through the proxy and the API server answered below 400. Resource, status, bytes, latency. Like every event of the agent (RQ, DN001W), it carries the request's correlation id and the W3C trace id the request went to the API server with, which the API server's own traces of it carry or link."},
	{AuditRequestFailed, CategoryRequest, "A Kubernetes request went through the proxy and the API server (or the way to it) answered 400 or above, e.g. an RBAC refusal."},
	{AuditStreamStarted, CategoryRequest, "An exec, attach or port-forward stream was upgraded (101). Its end is a RQ004I with the same correlation id."},
	{AuditStreamEnded, CategoryRequest, "An exec, attach or port-forward stream ended. Latency is how long it was open; error names why the proxy closed it, if it did. A recorded session's end carries Metadata recording (its id), recording_sha256, recording_bytes and recording_status (complete, truncated, failed), so clustral audit verify proves the stored recording was not edited; its start (RQ003I) names the recording too."},
	{AuditRecordingRescued, CategoryRequest, "A recorded exec or attach session's agent stopped before the session ended (killed or crashed), so the session has no RQ004I; the next agent on the same directory finished the recording with what it held and ships it. Correlation and metadata recording name the session; recording_sha256, recording_bytes and recording_status (truncated) vouch for the recording as RQ004I does."},
	{AuditProxyDenied, CategoryDenial, "The agent's proxy refused a request before it reached the API server; error holds the code (NO_ROLE_ASSIGNMENT, OUTSIDE_TIME_WINDOW, RATE_LIMITED, RECORDING_UNAVAILABLE, ...)."},
	{AuditAPIDenied, CategoryDenial, "The coordinator refused an administrative API call to a user who is not an administrator. Metadata: method, path."},
	{AuditCheckpointExport, CategoryAudit, "An administrator exported a signed checkpoint of the audit log (clustral audit checkpoint). The checkpoint names this event's own record."},
	{AuditEventsLost, CategoryAudit, "The coordinator could not queue or store audit events (its queue was full, or the store failed); this event counts them. Metadata: lost, first, last (times)."},
	{AuditExportFailing, CategoryAudit, "An audit export destination (--audit-export) could not take a batch: unreachable, TLS refused, or the receiver answered an error. The events stay in the log and are sent again with back-off from the destination's cursor; recorded at the first failure after a success or a start. Metadata: destination, error, pending (events not yet taken)."},
	{AuditExportRecovered, CategoryAudit, "An audit export destination took a batch again after failures, and catches up from its cursor. Metadata: destination, failures, since (the first failure)."},
	{AuditExportGap, CategoryAudit, "An audit export destination will not get some records: they were pruned while it was not configured, or the store was restored from a backup that does not hold its cursor. Export goes on after the gap (for a restore, from the oldest record kept, so records may be sent again). Metadata: destination, first, last (sequence numbers), reason."},
	{AuditRecordingPruned, CategoryAudit, "Retention (--recording-retention) removed a stored session recording whose session started longer ago than the retention. Correlation and metadata recording name the session; recording_sha256 and recording_bytes say what was removed; metadata started and retention say why. A recording that an audit event not yet taken by an export destination names is kept until the destination has it."},
}

var auditCodeIndex = func() map[AuditCode]AuditCodeInfo {
	m := make(map[AuditCode]AuditCodeInfo, len(AuditCodes))
	for _, c := range AuditCodes {
		m[c.Code] = c
	}
	return m
}()

// LookupAuditCode returns the catalogue entry of c.
func LookupAuditCode(c AuditCode) (AuditCodeInfo, bool) {
	i, ok := auditCodeIndex[c]
	return i, ok
}

// SeverityName returns the long name of a severity suffix.
func SeverityName(s string) string {
	switch strings.ToUpper(s) {
	case "I":
		return "info"
	case "W":
		return "warning"
	case "E":
		return "error"
	}
	return ""
}
