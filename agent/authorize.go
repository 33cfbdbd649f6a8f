package agent

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/clustral/clustral/proto"
)

// groupAuthenticated is added to every impersonated identity, as the
// apiserver's own authenticators do for any authenticated user.
const groupAuthenticated = "system:authenticated"

// impersonation is the Kubernetes identity a request is forwarded as,
// and how its exec or attach session is recorded.
type impersonation struct {
	user   string
	groups []string // distinct, in grant order, system:authenticated last
	// recording is the strongest policy of the allowing grants;
	// recordStdin is set if one of those that record asks for stdin.
	recording   proto.RecordingPolicy
	recordStdin bool
}

// equal reports whether a stream authorized as a may go on as b: a
// stream whose recording policy changed is closed too, so that it starts
// again under the new one.
func (a impersonation) equal(b impersonation) bool {
	return a.user == b.user && slices.Equal(a.groups, b.groups) &&
		a.recording.Rank() == b.recording.Rank() && a.recordStdin == b.recordStdin
}

// denial is why a caller may not use the proxy. Its message is a sentence
// for a person, shown verbatim by kubectl.
type denial struct {
	status int
	code   proto.ErrorCode
	msg    string
	// closeConn asks to close the client connection after the answer.
	closeConn bool
	// retryAfter, if positive, is sent as Retry-After in seconds.
	retryAfter int
}

func (d *denial) Error() string { return string(d.code) + ": " + d.msg }

func deny(status int, code proto.ErrorCode, format string, args ...any) *denial {
	return &denial{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

// authorize decides, from the caller's peer in the current map, what the
// request asks for and the time now, whether the caller may make the
// request and as whom. It is a pure function of its arguments.
//
// Grants whose Expires is at or before now do not apply. A grant allows
// the request only if the request matches every restriction of the grant
// and now is inside one of its time windows, if it has any. The
// impersonated user is the login, unless an allowing grant names a
// KubeUser (the first such grant wins); the groups are the distinct
// groups of every allowing grant, plus system:authenticated. The
// identity's own OIDC groups select assignments at the coordinator and
// are never impersonated.
//
// If grants apply but none allows the request, the denial carries the
// code of the grant that came closest (see stage) and says what that
// grant allows.
func authorize(cluster string, peer proto.Peer, info requestInfo, now time.Time) (impersonation, *denial) {
	if peer.Kind != proto.KindDevice {
		return impersonation{}, deny(http.StatusForbidden, proto.CodeForbidden,
			"Peer %s is a %s, not a user device; only user devices may use the Kubernetes proxy of cluster '%s'.",
			peer.Key.ShortString(), kindName(peer.Kind), cluster)
	}
	id := peer.Identity
	if id == nil {
		return impersonation{}, deny(http.StatusForbidden, proto.CodeForbidden,
			"The mesh has no user identity for this device (peer %s) on cluster '%s'. Run: clustral up, and try again; if it persists, ask an admin to check the coordinator.",
			peer.Key.ShortString(), cluster)
	}
	if id.Login == "" {
		return impersonation{}, deny(http.StatusForbidden, proto.CodeForbidden,
			"The user behind this device (peer %s) has no login name, so cluster '%s' cannot tell who they are. Ask an admin to check the coordinator's login claim.",
			peer.Key.ShortString(), cluster)
	}
	if !id.Expires.IsZero() && !now.Before(id.Expires) {
		return impersonation{}, deny(http.StatusForbidden, proto.CodeAccessExpired,
			"The session of %s expired at %s. Run: clustral login",
			id.Login, id.Expires.UTC().Format(time.RFC3339))
	}
	if len(id.Roles) == 0 {
		return impersonation{}, deny(http.StatusForbidden, proto.CodeNoRoleAssignment,
			"%s has no role on cluster '%s'. Ask an admin to assign one, or run: clustral access request --cluster %s --role <role>",
			id.Login, cluster, cluster)
	}

	var (
		imp      impersonation
		live     bool // some grant has not expired
		allowed  bool // some grant allows the request
		refusals int
		closest  = stage(-1)
		refuser  proto.RoleGrant
	)
	for _, g := range id.Roles {
		if g.Expires != nil && !now.Before(*g.Expires) {
			continue
		}
		live = true
		if st := check(g.Restrictions, info, now); st != stageAllowed {
			refusals++
			if st > closest {
				closest, refuser = st, g
			}
			continue
		}
		allowed = true
		if g.Recording.Rank() > imp.recording.Rank() {
			imp.recording = g.Recording
		}
		if g.Recording.Rank() > 0 && g.RecordStdin {
			imp.recordStdin = true
		}
		if imp.user == "" && g.KubeUser != "" {
			imp.user = g.KubeUser
		}
		for _, group := range g.Groups {
			if group != "" && group != groupAuthenticated && !slices.Contains(imp.groups, group) {
				imp.groups = append(imp.groups, group)
			}
		}
	}
	if !live {
		last := latestExpiry(id.Roles)
		return impersonation{}, deny(http.StatusForbidden, proto.CodeAccessExpired,
			"The access of %s to cluster '%s' (role '%s') expired at %s. Ask an admin to renew it, or run: clustral access request --cluster %s --role %s",
			id.Login, cluster, last.Role, last.Expires.UTC().Format(time.RFC3339), cluster, last.Role)
	}
	if !allowed {
		others := ""
		if refusals > 1 {
			others = "; no other role of theirs allows it either"
		}
		return impersonation{}, deny(http.StatusForbidden, stageCodes[closest],
			"%s may not %s on cluster '%s': %s%s. Ask an admin, or run: clustral access request --cluster %s --role <role>",
			id.Login, describe(info), cluster, refusal(refuser, info, closest, now), others, cluster)
	}
	if imp.user == "" {
		// Names under system: are Kubernetes' own (nodes, controllers,
		// service accounts); an identity provider must never be able to
		// claim one. Roles may, since admins set KubeUser deliberately.
		if strings.HasPrefix(id.Login, "system:") {
			return impersonation{}, deny(http.StatusForbidden, proto.CodeForbidden,
				"The login '%s' is reserved by Kubernetes and cannot be used on cluster '%s'. Ask an admin to configure a different login claim.",
				id.Login, cluster)
		}
		imp.user = id.Login
	}
	imp.groups = append(imp.groups, groupAuthenticated)
	return imp, nil
}

// latestExpiry returns the grant that expired last. All grants must carry
// an expiry.
func latestExpiry(grants []proto.RoleGrant) proto.RoleGrant {
	last := grants[0]
	for _, g := range grants[1:] {
		if g.Expires.After(*last.Expires) {
			last = g
		}
	}
	return last
}

func kindName(k proto.NodeKind) string {
	switch k {
	case proto.KindAgent:
		return "cluster agent"
	case "":
		return "node of unknown kind"
	}
	return string(k)
}
