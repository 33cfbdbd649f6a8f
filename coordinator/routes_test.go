package coordinator

import (
	"net/http"
	"testing"

	"github.com/clustral/clustral/proto"
)

// TestRouteAuthentication holds the route table's wrappers to what they
// say: every route but the public ones refuses a caller without a
// credential, the admin routes refuse a user who is not an administrator
// (and the user routes let them through), and the agent route refuses a
// device.
func TestRouteAuthentication(t *testing.T) {
	e := newTestEnv(t)
	bob := e.login("bob@example.com")
	var dev proto.RegisterResponse
	e.must("POST", "/api/v1/devices", bob.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}, &dev)

	const v = proto.APIVersion
	type route struct{ method, path string }
	public := []route{
		{"GET", "/healthz"}, {"GET", "/readyz"}, {"GET", v + "/info"}, {"GET", proto.RelayPath + "/stats"},
	}
	user := []route{
		{"GET", v + "/whoami"}, {"GET", v + "/devices"}, {"GET", v + "/sessions"}, {"GET", v + "/access-requests"}, {"GET", v + "/audit/events"},
	}
	admin := []route{
		{"GET", v + "/admin/backup"},
		{"GET", v + "/clusters"}, {"POST", v + "/clusters"}, {"GET", v + "/clusters/x"}, {"PUT", v + "/clusters/x/labels"},
		{"POST", v + "/clusters/x/rotate-token"}, {"DELETE", v + "/clusters/x"},
		{"GET", v + "/roles"}, {"POST", v + "/roles"}, {"GET", v + "/roles/x"}, {"PUT", v + "/roles/x"}, {"DELETE", v + "/roles/x"},
		{"GET", v + "/assignments"}, {"POST", v + "/assignments"}, {"DELETE", v + "/assignments/x"},
		{"GET", v + "/users"}, {"GET", v + "/users/x"}, {"POST", v + "/users/x/disable"},
		{"GET", v + "/audit/verify"}, {"POST", v + "/audit/verify"}, {"POST", v + "/audit/checkpoints"},
	}
	others := []route{
		{"DELETE", v + "/session"}, {"DELETE", v + "/sessions/x"}, {"DELETE", v + "/devices/x"}, {"POST", v + "/access-requests"}, {"POST", v + "/access-requests/x/approve"},
		{"POST", v + "/devices"}, {"POST", v + "/agents"},
		{"DELETE", v + "/nodes/self"}, {"PUT", v + "/nodes/self/endpoints"}, {"GET", v + "/map"}, {"GET", proto.RelayPath},
		{"POST", v + "/audit/events"},
	}

	for _, r := range public {
		if status, p := e.call(r.method, r.path, "", nil, nil); status != http.StatusOK {
			t.Errorf("public %s %s without a credential = %d %+v, want 200", r.method, r.path, status, p)
		}
	}
	for _, list := range [][]route{user, admin, others} {
		for _, r := range list {
			if status, p := e.call(r.method, r.path, "", nil, nil); status != http.StatusUnauthorized {
				t.Errorf("%s %s without a credential = %d %+v, want 401", r.method, r.path, status, p)
			}
		}
	}
	for _, r := range admin {
		if status, p := e.call(r.method, r.path, bob.Token, nil, nil); status != http.StatusForbidden || p.Code != proto.CodeForbidden {
			t.Errorf("%s %s by a user who is not an administrator = %d %+v, want 403", r.method, r.path, status, p)
		}
	}
	for _, r := range user {
		if status, p := e.call(r.method, r.path, bob.Token, nil, nil); status != http.StatusOK {
			t.Errorf("%s %s by a user = %d %+v, want 200", r.method, r.path, status, p)
		}
	}
	if status, p := e.call("POST", v+"/audit/events", dev.NodeToken, proto.AuditBatch{Source: "x"}, nil); status != http.StatusForbidden {
		t.Errorf("audit events from a device = %d %+v, want 403", status, p)
	}
}
