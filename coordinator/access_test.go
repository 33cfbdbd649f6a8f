package coordinator

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

// accessEnv is a mesh with cluster prod, role viewer (approvable by group
// sre), an agent streaming its map, and users alice (requester), sam (in
// sre) and admin.
type accessEnv struct {
	*testEnv
	admin, alice, sam proto.Session
	agentMap          *mapStream
	joinToken         string
}

func newAccessEnv(t *testing.T) *accessEnv {
	t.Helper()
	return newAccessEnvWith(t, nil)
}

// newAccessEnvWith is newAccessEnv with configure applied to the
// coordinator's configuration.
func newAccessEnvWith(t *testing.T, configure func(*Config)) *accessEnv {
	t.Helper()
	e := &accessEnv{testEnv: newTestEnvWith(t, configure)}
	e.admin = e.login("admin@example.com")
	e.alice = e.login("alice@example.com", "dev")
	e.sam = e.login("sam@example.com", "sre")
	var cl proto.CreateClusterResponse
	e.must("POST", "/api/v1/clusters", e.admin.Token, proto.CreateClusterRequest{Name: "prod", Labels: map[string]string{"env": "prod"}}, &cl)
	e.joinToken = cl.JoinToken
	e.must("POST", "/api/v1/roles", e.admin.Token, proto.Role{Name: "viewer", Groups: []string{"viewers"}, ApproverGroups: []string{"sre"}}, nil)
	agent := e.registerAgent(cl.JoinToken, "")
	var dev proto.RegisterResponse
	e.must("POST", "/api/v1/devices", e.alice.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}, &dev)
	e.agentMap = e.openMap(agent.NodeToken)
	if m := e.agentMap.next(); len(m.Peers) != 0 {
		t.Fatalf("agent starts with peers %+v", m.Peers)
	}
	return e
}

func (e *accessEnv) request(tok string, body proto.CreateAccessRequest) (proto.AccessRequest, int, *proto.Problem) {
	var ar proto.AccessRequest
	status, p := e.call("POST", "/api/v1/access-requests", tok, body, &ar)
	return ar, status, p
}

func TestAccessRequestLifecycle(t *testing.T) {
	e := newAccessEnv(t)
	ar, status, p := e.request(e.alice.Token, proto.CreateAccessRequest{Role: "viewer", Cluster: "prod", Duration: proto.Duration(time.Hour), Reason: "INC-1"})
	if p != nil {
		t.Fatalf("request = %d %+v", status, p)
	}
	if ar.State != proto.RequestPending || ar.User != "alice@example.com" {
		t.Fatalf("request = %+v", ar)
	}
	// Nobody approves their own request, not even with the right.
	if status, p := e.call("POST", "/api/v1/access-requests/"+ar.ID+"/approve", e.alice.Token, nil, nil); status != http.StatusForbidden || p.Code != proto.CodeForbidden {
		t.Fatalf("self-approval = %d %+v", status, p)
	}
	// Lengthening is refused.
	if status, _ := e.call("POST", "/api/v1/access-requests/"+ar.ID+"/approve", e.sam.Token, proto.AccessDecision{Duration: proto.Duration(2 * time.Hour)}, nil); status != http.StatusBadRequest {
		t.Fatalf("approve longer = %d, want 400", status)
	}
	var approved proto.AccessRequest
	e.must("POST", "/api/v1/access-requests/"+ar.ID+"/approve", e.sam.Token, proto.AccessDecision{Duration: proto.Duration(30 * time.Minute), Reason: "ok"}, &approved)
	if approved.State != proto.RequestApproved || approved.DecidedBy != "sam@example.com" || approved.GrantExpires == nil {
		t.Fatalf("approved = %+v", approved)
	}
	m := e.agentMap.next()
	if len(m.Peers) != 1 || len(m.Peers[0].Identity.Roles) != 1 {
		t.Fatalf("agent delta after approval = %+v", m)
	}
	g := m.Peers[0].Identity.Roles[0]
	if g.Role != "viewer" || g.Expires == nil || g.Source != "grant:"+ar.ID || g.Expires.Sub(time.Now()) > 31*time.Minute {
		t.Fatalf("grant in agent map = %+v", g)
	}
	// Deciding twice is refused.
	if status, _ := e.call("POST", "/api/v1/access-requests/"+ar.ID+"/deny", e.sam.Token, proto.AccessDecision{Reason: "no"}, nil); status != http.StatusConflict {
		t.Fatalf("deny after approve = %d, want 409", status)
	}
	// Revoking removes the device from the agent's map at once.
	e.must("POST", "/api/v1/access-requests/"+ar.ID+"/revoke", e.sam.Token, nil, nil)
	if m := e.agentMap.next(); len(m.Removed) != 1 {
		t.Fatalf("agent delta after revoke = %+v", m)
	}

	// Deny needs a reason; a denied request grants nothing.
	ar2, _, _ := e.request(e.alice.Token, proto.CreateAccessRequest{Role: "viewer", Cluster: "prod", Duration: proto.Duration(time.Hour), Reason: "again"})
	if status, _ := e.call("POST", "/api/v1/access-requests/"+ar2.ID+"/deny", e.sam.Token, nil, nil); status != http.StatusBadRequest {
		t.Fatalf("deny without reason = %d", status)
	}
	var denied proto.AccessRequest
	e.must("POST", "/api/v1/access-requests/"+ar2.ID+"/deny", e.sam.Token, proto.AccessDecision{Reason: "use staging"}, &denied)
	if denied.State != proto.RequestDenied {
		t.Fatalf("denied = %+v", denied)
	}
	var list []proto.AccessRequest
	e.must("GET", "/api/v1/access-requests?state=denied", e.alice.Token, nil, &list)
	if len(list) != 1 || list[0].ID != ar2.ID {
		t.Fatalf("alice's denied requests = %+v", list)
	}
}

func TestAccessRequestValidation(t *testing.T) {
	e := newAccessEnv(t)
	tests := []struct {
		name string
		req  proto.CreateAccessRequest
		code int
	}{
		{"no reason", proto.CreateAccessRequest{Role: "viewer", Cluster: "prod", Duration: proto.Duration(time.Hour)}, 400},
		{"no duration", proto.CreateAccessRequest{Role: "viewer", Cluster: "prod", Reason: "x"}, 400},
		{"too long", proto.CreateAccessRequest{Role: "viewer", Cluster: "prod", Reason: "x", Duration: proto.Duration(30 * 24 * time.Hour)}, 400},
		{"unknown role", proto.CreateAccessRequest{Role: "god", Cluster: "prod", Reason: "x", Duration: proto.Duration(time.Hour)}, 404},
		{"unknown cluster", proto.CreateAccessRequest{Role: "viewer", Cluster: "mars", Reason: "x", Duration: proto.Duration(time.Hour)}, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, status, _ := e.request(e.alice.Token, tt.req); status != tt.code {
				t.Fatalf("= %d, want %d", status, tt.code)
			}
		})
	}
	// A user outside the approver groups cannot decide.
	ar, _, _ := e.request(e.sam.Token, proto.CreateAccessRequest{Role: "viewer", Cluster: "prod", Duration: proto.Duration(time.Hour), Reason: "x"})
	if status, _ := e.call("POST", "/api/v1/access-requests/"+ar.ID+"/approve", e.alice.Token, nil, nil); status != http.StatusForbidden {
		t.Fatalf("approval by a non-approver = %d, want 403", status)
	}
}

func TestPendingRequestExpires(t *testing.T) {
	e := newAccessEnv(t)
	now := time.Now()
	e.srv.now = func() time.Time { return now }
	ar, _, _ := e.request(e.alice.Token, proto.CreateAccessRequest{Role: "viewer", Cluster: "prod", Duration: proto.Duration(time.Hour), Reason: "x"})
	now = now.Add(25 * time.Hour)
	if err := e.srv.expire(); err != nil {
		t.Fatal(err)
	}
	e.srv.mu.Lock()
	live := e.srv.requests[ar.ID]
	e.srv.mu.Unlock()
	if live != nil {
		t.Fatalf("expired request still live: %+v", live)
	}
	// Every session expired with the clock too: read the archive.
	list, err := e.srv.archivedRequests(func(ar *accessRequest) bool { return ar.State == proto.RequestExpired })
	if err != nil || len(list) != 1 || list[0].ID != ar.ID {
		t.Fatalf("archived expired requests = %+v, %v", list, err)
	}
}

func TestDisableUserRevokesEverything(t *testing.T) {
	e := newAccessEnv(t)
	e.must("POST", "/api/v1/assignments", e.admin.Token, proto.Assignment{User: "alice@example.com", Role: "viewer", Cluster: "prod"}, nil)
	if m := e.agentMap.next(); len(m.Peers) != 1 {
		t.Fatalf("after assign: %+v", m)
	}
	e.must("POST", "/api/v1/users/alice@example.com/disable", e.admin.Token, nil, nil)
	if m := e.agentMap.next(); len(m.Removed) != 1 {
		t.Fatalf("after disable the agent got %+v", m)
	}
	if status, _ := e.call("GET", "/api/v1/whoami", e.alice.Token, nil, nil); status != http.StatusUnauthorized {
		t.Fatalf("disabled user's session = %d, want 401", status)
	}
	if status, _ := e.call("POST", "/api/v1/users/admin@example.com/disable", e.admin.Token, nil, nil); status != http.StatusBadRequest {
		t.Fatalf("self-disable = %d", status)
	}
}

func TestSelectorAssignmentsAndLabels(t *testing.T) {
	e := newAccessEnv(t)
	e.must("POST", "/api/v1/assignments", e.admin.Token, proto.Assignment{Group: "dev", Role: "viewer", ClusterSelector: map[string]string{"env": "prod"}}, nil)
	if m := e.agentMap.next(); len(m.Peers) != 1 || m.Peers[0].Identity.Roles[0].Source != "group:dev" {
		t.Fatalf("selector assignment delta = %+v", m)
	}
	// Relabelling the cluster out of the selector removes the access.
	e.must("PUT", "/api/v1/clusters/prod/labels", e.admin.Token, proto.ClusterLabels{Labels: map[string]string{"env": "staging"}}, nil)
	if m := e.agentMap.next(); len(m.Removed) != 1 {
		t.Fatalf("after relabel = %+v", m)
	}
}

func TestJoinTokenRotateAndRevoke(t *testing.T) {
	e := newAccessEnv(t)
	var jt proto.JoinToken
	e.must("POST", "/api/v1/clusters/prod/rotate-token", e.admin.Token, nil, &jt)
	if jt.JoinToken == "" || jt.JoinToken == e.joinToken {
		t.Fatalf("rotated token = %+v", jt)
	}
	if status, _ := e.call("POST", "/api/v1/agents", e.joinToken, proto.RegisterAgentRequest{PublicKey: newKey(t), CSR: newCSR(t)}, nil); status != http.StatusUnauthorized {
		t.Fatalf("old token after rotation = %d, want 401", status)
	}
	e.registerAgent(jt.JoinToken, "")
	e.must("POST", "/api/v1/clusters/prod/revoke-token", e.admin.Token, nil, nil)
	// The streaming agent was removed: its stream ends.
	select {
	case _, ok := <-e.agentMap.msgs:
		if ok {
			for range e.agentMap.msgs {
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatal("agent stream still open after token revocation")
	}
	var c proto.Cluster
	e.must("GET", "/api/v1/clusters/prod", e.admin.Token, nil, &c)
	if len(c.Agents) != 0 {
		t.Fatalf("agents after revoke = %+v", c.Agents)
	}
}

func TestRoleRestrictionsValidatedAndDelivered(t *testing.T) {
	e := newAccessEnv(t)
	for _, tt := range []struct {
		rs   proto.Restrictions
		want string
	}{
		{proto.Restrictions{Verbs: []string{"destroy"}}, `verb "destroy"`},
		{proto.Restrictions{Resources: []string{"pods/*"}}, `resource "pods/*": a subresource cannot be *`},
		{proto.Restrictions{NonResourceURLs: []string{"/logs/../etc"}}, `non-resource URL "/logs/../etc": want a clean path`},
	} {
		bad := proto.Role{Name: "broken", Groups: []string{"g"}, Restrictions: &tt.rs}
		if status, p := e.call("POST", "/api/v1/roles", e.admin.Token, bad, nil); status != 400 || p.Code != proto.CodeBadRequest || !strings.Contains(p.Title+p.Detail, tt.want) {
			t.Fatalf("bad restriction %+v = %d %+v, want 400 naming %s", tt.rs, status, p, tt.want)
		}
	}
	upd := proto.Role{Groups: []string{"viewers"}, Restrictions: &proto.Restrictions{Namespaces: []string{"dev"}, NonResourceURLs: []string{"/healthz"}}}
	e.must("POST", "/api/v1/assignments", e.admin.Token, proto.Assignment{User: "alice@example.com", Role: "viewer", Cluster: "prod"}, nil)
	e.agentMap.next()
	e.must("PUT", "/api/v1/roles/viewer", e.admin.Token, upd, nil)
	m := e.agentMap.next()
	if len(m.Peers) != 1 || m.Peers[0].Identity.Roles[0].Restrictions == nil || m.Peers[0].Identity.Roles[0].Restrictions.Namespaces[0] != "dev" ||
		!slices.Equal(m.Peers[0].Identity.Roles[0].Restrictions.NonResourceURLs, []string{"/healthz"}) {
		t.Fatalf("role update delta = %+v", m)
	}
}

// TestApproveWithDeletedRole: a request whose role was deleted cannot be
// approved; the answer is a 409 with a sentence, not a panic.
func TestApproveWithDeletedRole(t *testing.T) {
	e := newAccessEnv(t)
	ar, status, p := e.request(e.alice.Token, proto.CreateAccessRequest{Role: "viewer", Cluster: "prod", Duration: proto.Duration(time.Hour), Reason: "INC-2"})
	if p != nil {
		t.Fatalf("request = %d %+v", status, p)
	}
	e.must("DELETE", "/api/v1/roles/viewer", e.admin.Token, nil, nil)
	for _, tc := range []struct {
		name, who, action string
		body              any
	}{
		{"approver approves", e.sam.Token, "approve", nil},
		{"admin approves", e.admin.Token, "approve", nil},
		{"approver denies", e.sam.Token, "deny", proto.AccessDecision{Reason: "gone"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, p := e.call("POST", "/api/v1/access-requests/"+ar.ID+"/"+tc.action, tc.who, tc.body, nil)
			if status != http.StatusConflict || p.Code != proto.CodeConflict || !strings.Contains(p.Title, "was deleted") {
				t.Fatalf("%s = %d %+v, want 409 naming the deleted role", tc.action, status, p)
			}
		})
	}
	// The requester may still withdraw it.
	e.must("POST", "/api/v1/access-requests/"+ar.ID+"/revoke", e.alice.Token, nil, nil)
}

// TestRoleFieldErrors: a refused role names the field that caused it,
// so a form can show the problem beside it.
func TestRoleFieldErrors(t *testing.T) {
	e := newTestEnv(t)
	admin := e.login("admin@example.com")
	e.must("POST", "/api/v1/roles", admin.Token, proto.Role{Name: "viewer", Groups: []string{"view"}}, nil)
	for _, tc := range []struct {
		name  string
		role  proto.Role
		field string
	}{
		{"bad name", proto.Role{Name: "Not Valid", Groups: []string{"g"}}, "name"},
		{"taken name", proto.Role{Name: "viewer", Groups: []string{"g"}}, "name"},
		{"long description", proto.Role{Name: "r", Description: strings.Repeat("x", maxDescription+1), Groups: []string{"g"}}, "description"},
		{"no group", proto.Role{Name: "r"}, "groups"},
		{"long group", proto.Role{Name: "r", Groups: []string{"g", strings.Repeat("g", maxIdentifier+1)}}, "groups"},
		{"bad verb", proto.Role{Name: "r", Groups: []string{"g"}, Restrictions: &proto.Restrictions{Verbs: []string{"steal"}}}, "restrictions.verbs"},
		{"bad resource first", proto.Role{Name: "r", Groups: []string{"g"}, Restrictions: &proto.Restrictions{Verbs: []string{"steal"}, Resources: []string{"pods/*"}}}, "restrictions.verbs"},
		{"bad window", proto.Role{Name: "r", Groups: []string{"g"}, Restrictions: &proto.Restrictions{TimeWindows: []proto.TimeWindow{{Start: "25:00", End: "26:00"}}}}, "restrictions.time_windows"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, p := e.call("POST", "/api/v1/roles", admin.Token, tc.role, nil)
			if status < 400 || p == nil || p.Field != tc.field {
				t.Errorf("POST role = %d %+v, want the field %q named", status, p, tc.field)
			}
		})
	}
	if status, p := e.call("PUT", "/api/v1/roles/viewer", admin.Token, proto.Role{Name: "viewer", Groups: []string{"view"}, Restrictions: &proto.Restrictions{Resources: []string{"pods/*"}}}, nil); status != http.StatusBadRequest || p.Field != "restrictions.resources" {
		t.Errorf("PUT role with a bad resource = %d %+v, want restrictions.resources", status, p)
	}
}
