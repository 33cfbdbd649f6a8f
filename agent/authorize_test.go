package agent

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) *time.Time {
	t := t0.Add(d)
	return &t
}

func TestAuthorize(t *testing.T) {
	dev := func(id *proto.Identity) proto.Peer {
		return proto.Peer{Key: proto.Key{1}, Kind: proto.KindDevice, Identity: id}
	}
	alice := func(roles ...proto.RoleGrant) *proto.Identity {
		return &proto.Identity{UserID: "u1", Login: "alice@example.com", Groups: []string{"oidc-admins"}, Roles: roles, Expires: t0.Add(time.Hour)}
	}
	tests := []struct {
		name     string
		peer     proto.Peer
		user     string
		groups   []string
		code     proto.ErrorCode
		contains string
	}{
		{
			name:   "one role",
			peer:   dev(alice(proto.RoleGrant{Role: "view", Groups: []string{"viewers"}})),
			user:   "alice@example.com",
			groups: []string{"viewers", "system:authenticated"},
		},
		{
			name: "groups are the distinct union of applicable roles, OIDC groups excluded",
			peer: dev(alice(
				proto.RoleGrant{Role: "dev", Groups: []string{"developers", "viewers"}},
				proto.RoleGrant{Role: "view", Groups: []string{"viewers", "system:authenticated", ""}},
				proto.RoleGrant{Role: "ops", Groups: []string{"operators"}, Expires: at(time.Minute)},
			)),
			user:   "alice@example.com",
			groups: []string{"developers", "viewers", "operators", "system:authenticated"},
		},
		{
			name: "expired grant does not apply",
			peer: dev(alice(
				proto.RoleGrant{Role: "admin", Groups: []string{"system:masters"}, Expires: at(0)},
				proto.RoleGrant{Role: "view", Groups: []string{"viewers"}},
			)),
			user:   "alice@example.com",
			groups: []string{"viewers", "system:authenticated"},
		},
		{
			name: "first KubeUser of an applicable grant wins",
			peer: dev(alice(
				proto.RoleGrant{Role: "old", KubeUser: "expired-user", Expires: at(-time.Second)},
				proto.RoleGrant{Role: "view", Groups: []string{"viewers"}},
				proto.RoleGrant{Role: "deploy", KubeUser: "deployer", Groups: []string{"deployers"}},
				proto.RoleGrant{Role: "other", KubeUser: "other"},
			)),
			user:   "deployer",
			groups: []string{"viewers", "deployers", "system:authenticated"},
		},
		{
			name:   "role without groups still grants",
			peer:   dev(alice(proto.RoleGrant{Role: "bare"})),
			user:   "alice@example.com",
			groups: []string{"system:authenticated"},
		},
		{
			name:     "no role",
			peer:     dev(alice()),
			code:     proto.CodeNoRoleAssignment,
			contains: "alice@example.com has no role on cluster 'prod'. Ask an admin to assign one, or run: clustral access request --cluster prod --role <role>",
		},
		{
			name: "all grants expired",
			peer: dev(alice(
				proto.RoleGrant{Role: "admin", Expires: at(-time.Hour)},
				proto.RoleGrant{Role: "ops", Expires: at(-time.Minute)},
			)),
			code:     proto.CodeAccessExpired,
			contains: "clustral access request --cluster prod --role ops",
		},
		{
			name: "session expired",
			peer: func() proto.Peer {
				id := alice(proto.RoleGrant{Role: "view"})
				id.Expires = t0
				return dev(id)
			}(),
			code:     proto.CodeAccessExpired,
			contains: "run: clustral login",
		},
		{
			name:     "agent peer",
			peer:     proto.Peer{Kind: proto.KindAgent, Identity: alice(proto.RoleGrant{Role: "view"})},
			code:     proto.CodeForbidden,
			contains: "not a user device",
		},
		{
			name:     "no identity",
			peer:     dev(nil),
			code:     proto.CodeForbidden,
			contains: "no user identity",
		},
		{
			name:     "no login",
			peer:     dev(&proto.Identity{Roles: []proto.RoleGrant{{Role: "view"}}}),
			code:     proto.CodeForbidden,
			contains: "no login name",
		},
		{
			name: "reserved login",
			peer: dev(&proto.Identity{Login: "system:kube-controller-manager", Roles: []proto.RoleGrant{{Role: "view", Groups: []string{"viewers"}}}}),
			code: proto.CodeForbidden, contains: "reserved by Kubernetes",
		},
		{
			name:   "reserved login replaced by a role's KubeUser",
			peer:   dev(&proto.Identity{Login: "system:admin", Roles: []proto.RoleGrant{{Role: "ci", KubeUser: "ci-bot"}}}),
			user:   "ci-bot",
			groups: []string{"system:authenticated"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			imp, d := authorize("prod", tt.peer, reqInfo(t, "GET", "/api/v1/namespaces/default/pods"), t0)
			if tt.code != "" {
				if d == nil {
					t.Fatalf("authorized as %+v, want %s", imp, tt.code)
				}
				if d.code != tt.code || d.status != http.StatusForbidden {
					t.Errorf("denial = %d %s, want 403 %s", d.status, d.code, tt.code)
				}
				if !strings.Contains(strings.ToLower(d.msg), strings.ToLower(tt.contains)) {
					t.Errorf("message %q does not contain %q", d.msg, tt.contains)
				}
				return
			}
			if d != nil {
				t.Fatalf("denied: %v", d)
			}
			if imp.user != tt.user || !slices.Equal(imp.groups, tt.groups) {
				t.Errorf("impersonation = %q %q, want %q %q", imp.user, imp.groups, tt.user, tt.groups)
			}
		})
	}
}
