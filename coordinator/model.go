package coordinator

import (
	"net/netip"
	"slices"
	"time"

	"github.com/clustral/clustral/proto"
)

// The records the coordinator persists in its store. They are the
// coordinator's own; what crosses the wire is built from them in proto
// types.

type user struct {
	ID       string    `json:"id"`
	Subject  string    `json:"subject"` // issuer subject
	Login    string    `json:"login"`
	Email    string    `json:"email"`
	Name     string    `json:"name,omitempty"`
	Groups   []string  `json:"groups,omitempty"`
	Disabled bool      `json:"disabled,omitempty"`
	Created  time.Time `json:"created"`
	LastSeen time.Time `json:"last_seen"`
}

type session struct {
	IDHash  string    `json:"id_hash"` // sha256 of the session id
	UserID  string    `json:"user_id"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	// Kind is proto.SessionConsole for a web console's browser session;
	// empty for a CLI's.
	Kind proto.SessionKind `json:"kind,omitempty"`
}

type node struct {
	ID        string         `json:"id"`
	Kind      proto.NodeKind `json:"kind"`
	Key       proto.Key      `json:"key"`
	TokenHash string         `json:"token_hash"`
	Hostname  string         `json:"hostname,omitempty"`
	Addresses []netip.Prefix `json:"addresses"`
	Created   time.Time      `json:"created"`
	// Devices: the owning user and session; the device expires with it.
	UserID    string    `json:"user_id,omitempty"`
	SessionID string    `json:"session_id,omitempty"` // hash
	Expires   time.Time `json:"expires,omitzero"`
	// Agents: the cluster.
	ClusterID string    `json:"cluster_id,omitempty"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
	// CertKey is an agent's serving public key (PKIX DER) from its
	// registration's certificate request; its certificate is renewed for
	// this key over the map stream. Agents registered before renewal
	// existed have none and are not renewed.
	CertKey []byte `json:"cert_key,omitempty"`
	// Endpoints are the node's published endpoints, stored only on a
	// shared store, so that replicas other than the one the node
	// streams from can offer them to its peers (shareEndpoints).
	Endpoints []netip.AddrPort `json:"endpoints,omitempty"`
}

type cluster struct {
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	Labels        map[string]string `json:"labels,omitempty"`
	JoinTokenHash string            `json:"join_token_hash"`
	Created       time.Time         `json:"created"`
}

type role struct {
	ID             string                `json:"id"`
	Name           string                `json:"name"`
	Description    string                `json:"description,omitempty"`
	Groups         []string              `json:"groups"`
	KubeUser       string                `json:"kube_user,omitempty"`
	Restrictions   *proto.Restrictions   `json:"restrictions,omitempty"`
	ApproverGroups []string              `json:"approver_groups,omitempty"`
	Admin          bool                  `json:"admin,omitempty"`
	Recording      proto.RecordingPolicy `json:"recording,omitempty"`
	RecordStdin    bool                  `json:"record_stdin,omitempty"`
	Created        time.Time             `json:"created"`
}

type assignment struct {
	ID        string `json:"id"`
	UserID    string `json:"user_id,omitempty"`
	Group     string `json:"group,omitempty"`
	RoleID    string `json:"role_id"`
	ClusterID string `json:"cluster_id,omitempty"`
	// Selector, instead of ClusterID, matches clusters by labels.
	Selector  map[string]string `json:"selector,omitempty"`
	RequestID string            `json:"request_id,omitempty"`
	Expires   *time.Time        `json:"expires,omitempty"`
	Created   time.Time         `json:"created"`
	CreatedBy string            `json:"created_by"`
}

// change is an audit-ready record of an administrative change: who did what
// to which object, kept append-only in the store.
func (a *assignment) activeAt(now time.Time) bool {
	return a.Expires == nil || now.Before(*a.Expires)
}

// appliesTo reports whether a names cluster c, directly or by selector.
func (a *assignment) appliesTo(c *cluster) bool {
	if c == nil {
		return false
	}
	if a.ClusterID != "" {
		return a.ClusterID == c.ID
	}
	return len(a.Selector) > 0 && labelsMatch(a.Selector, c.Labels)
}

func labelsMatch(sel, labels map[string]string) bool {
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// accessRequest is a just-in-time request for a role on a cluster.
type accessRequest struct {
	ID             string        `json:"id"`
	UserID         string        `json:"user_id"`
	RoleID         string        `json:"role_id"`
	ClusterID      string        `json:"cluster_id"`
	Reason         string        `json:"reason"`
	Duration       time.Duration `json:"duration"`
	State          string        `json:"state"`
	Created        time.Time     `json:"created"`
	PendingUntil   time.Time     `json:"pending_until"`
	DecidedBy      string        `json:"decided_by,omitempty"`
	DecidedAt      time.Time     `json:"decided_at,omitzero"`
	DecisionReason string        `json:"decision_reason,omitempty"`
	GrantExpires   *time.Time    `json:"grant_expires,omitempty"`
	AssignmentID   string        `json:"assignment_id,omitempty"`
}

func (u *user) toProto(admin bool) proto.User {
	return proto.User{
		ID: u.ID, Login: u.Login, Email: u.Email, Name: u.Name,
		Groups: slices.Clone(u.Groups), Admin: admin, Disabled: u.Disabled,
		Created: u.Created, LastSeen: u.LastSeen,
	}
}

func (r *role) toProto() proto.Role {
	return proto.Role{ID: r.ID, Name: r.Name, Description: r.Description, Groups: slices.Clone(r.Groups), KubeUser: r.KubeUser,
		Restrictions: r.Restrictions, ApproverGroups: slices.Clone(r.ApproverGroups), Admin: r.Admin,
		Recording: r.Recording, RecordStdin: r.RecordStdin}
}
