package coordinator

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/clustral/clustral/proto"
)

func TestDeviceListUserFilterDoesNotRevealUsers(t *testing.T) {
	e := newTestEnv(t)
	admin := e.login("admin@example.com")
	alice := e.login("alice@example.com")
	e.login("bob@example.com")
	e.must("POST", "/api/v1/devices", alice.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}, nil)

	list := func(token, user string) (int, *proto.Problem, []proto.Device) {
		t.Helper()
		var ds []proto.Device
		status, p := e.call("GET", "/api/v1/devices?user="+url.QueryEscape(user), token, nil, &ds)
		return status, p, ds
	}
	// Alice asking about an existing and a missing user gets the same
	// answer.
	stBob, pBob, _ := list(alice.Token, "bob@example.com")
	stNobody, pNobody, _ := list(alice.Token, "nobody@example.com")
	if stBob != http.StatusForbidden || stNobody != stBob || *pBob != *pNobody {
		t.Fatalf("non-admin filter: existing user = %d %+v, missing user = %d %+v; want the same 403", stBob, pBob, stNobody, pNobody)
	}
	// Naming herself works.
	if status, p, ds := list(alice.Token, "alice@example.com"); p != nil || len(ds) != 1 {
		t.Fatalf("own filter = %d %+v %v", status, p, ds)
	}
	// An administrator still learns that a user does not exist.
	if status, p, _ := list(admin.Token, "nobody@example.com"); status != http.StatusNotFound || p.Code != proto.CodeNotFound {
		t.Fatalf("admin filter on a missing user = %d %+v, want 404", status, p)
	}
	if status, p, ds := list(admin.Token, "alice@example.com"); p != nil || len(ds) != 1 {
		t.Fatalf("admin filter = %d %+v %v", status, p, ds)
	}
}
