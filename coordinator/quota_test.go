package coordinator

import (
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// TestDeviceCapPerUser: a user has at most MaxDevicesPerUser devices; the
// next registration is refused with a sentence until one is revoked.
func TestDeviceCapPerUser(t *testing.T) {
	e := newTestEnvWith(t, func(c *Config) { c.MaxDevicesPerUser = 3 })
	alice := e.login("alice@example.com")
	bob := e.login("bob@example.com")
	var ids []string
	for range 3 {
		var r proto.RegisterResponse
		e.must("POST", "/api/v1/devices", alice.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}, &r)
		ids = append(ids, r.NodeID)
	}
	status, p := e.call("POST", "/api/v1/devices", alice.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}, nil)
	if status != http.StatusConflict || p.Code != proto.CodeQuotaExceeded || p.Title != "alice@example.com already has 3 devices, the most one user may have" {
		t.Fatalf("fourth device = %d %+v, want 409 QUOTA_EXCEEDED", status, p)
	}
	// The cap is per user.
	e.must("POST", "/api/v1/devices", bob.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}, nil)
	e.must("DELETE", "/api/v1/devices/"+ids[0], alice.Token, nil, nil)
	e.must("POST", "/api/v1/devices", alice.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}, nil)
}

// TestConcurrentRegistrationsClaim: registrations write without the
// coordinator's lock, so what they claim is checked against those under
// way too: of concurrent registrations by one user, only as many as the
// device cap succeed, of two with one WireGuard key only one does, and
// every device gets its own addresses.
func TestConcurrentRegistrationsClaim(t *testing.T) {
	const maxDevices, tries = 3, 12
	e := newTestEnvWith(t, func(c *Config) { c.MaxDevicesPerUser = maxDevices })
	alice := e.login("alice@example.com")
	bob := e.login("bob@example.com")
	shared := newKey(t)
	type result struct {
		status int
		code   proto.ErrorCode
		resp   proto.RegisterResponse
	}
	results := make([]result, tries+2)
	var wg sync.WaitGroup
	for i := range results {
		token, key := alice.Token, newKey(t)
		if i >= tries { // bob's two, with one key
			token, key = bob.Token, shared
		}
		wg.Go(func() {
			r := &results[i]
			var p *proto.Problem
			if r.status, p = e.call("POST", "/api/v1/devices", token, proto.RegisterDeviceRequest{PublicKey: key}, &r.resp); p != nil {
				r.code = p.Code
			}
		})
	}
	wg.Wait()
	addrs := map[netip.Prefix]bool{}
	var alices, bobs int
	for i, r := range results {
		switch {
		case r.status == http.StatusOK:
			if i < tries {
				alices++
			} else {
				bobs++
			}
			for _, a := range r.resp.Addresses {
				if addrs[a] {
					t.Errorf("address %s handed out twice", a)
				}
				addrs[a] = true
			}
		case i < tries && r.code != proto.CodeQuotaExceeded, i >= tries && r.code != proto.CodeConflict:
			t.Errorf("registration %d = %d %s", i, r.status, r.code)
		}
	}
	if alices != maxDevices || bobs != 1 {
		t.Errorf("%d of alice's %d concurrent registrations and %d of bob's 2 with one key succeeded, want %d and 1", alices, tries, bobs, maxDevices)
	}
}

// TestPendingRequestCap: a user has at most MaxPendingRequests requests
// waiting for a decision.
func TestPendingRequestCap(t *testing.T) {
	e := newAccessEnvWith(t, func(c *Config) { c.MaxPendingRequests = 2 })
	for i := range 3 {
		e.must("POST", "/api/v1/roles", e.admin.Token, proto.Role{Name: fmt.Sprintf("r%d", i), Groups: []string{"g"}}, nil)
	}
	var first proto.AccessRequest
	for i := range 2 {
		ar, status, p := e.request(e.alice.Token, proto.CreateAccessRequest{Role: fmt.Sprintf("r%d", i), Cluster: "prod", Duration: proto.Duration(time.Hour), Reason: "x"})
		if p != nil {
			t.Fatalf("request %d = %d %+v", i, status, p)
		}
		if i == 0 {
			first = ar
		}
	}
	_, status, p := e.request(e.alice.Token, proto.CreateAccessRequest{Role: "r2", Cluster: "prod", Duration: proto.Duration(time.Hour), Reason: "x"})
	if status != http.StatusConflict || p.Code != proto.CodeQuotaExceeded {
		t.Fatalf("third pending request = %d %+v, want 409 QUOTA_EXCEEDED", status, p)
	}
	// A decision frees a place.
	e.must("POST", "/api/v1/access-requests/"+first.ID+"/deny", e.admin.Token, proto.AccessDecision{Reason: "no"}, nil)
	if _, status, p := e.request(e.alice.Token, proto.CreateAccessRequest{Role: "r2", Cluster: "prod", Duration: proto.Duration(time.Hour), Reason: "x"}); p != nil {
		t.Fatalf("request after a denial = %d %+v", status, p)
	}
}

// TestEndedRequestsAreArchived: denied, revoked and expired requests leave
// the live set (which the expiry sweep walks under the global lock) for
// the archive, are still listed, and cannot be decided again; a store
// that kept them live is migrated at start.
func TestEndedRequestsAreArchived(t *testing.T) {
	e := newAccessEnv(t)
	ar, _, p := e.request(e.alice.Token, proto.CreateAccessRequest{Role: "viewer", Cluster: "prod", Duration: proto.Duration(time.Hour), Reason: "x"})
	if p != nil {
		t.Fatal(p)
	}
	e.must("POST", "/api/v1/access-requests/"+ar.ID+"/deny", e.sam.Token, proto.AccessDecision{Reason: "no"}, nil)
	live := func() int {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		return len(e.srv.requests)
	}
	if n := live(); n != 0 {
		t.Fatalf("%d live requests after the denial, want 0", n)
	}
	var list []proto.AccessRequest
	e.must("GET", "/api/v1/access-requests", e.alice.Token, nil, &list)
	if len(list) != 1 || list[0].State != proto.RequestDenied {
		t.Fatalf("alice's requests = %+v", list)
	}
	for _, tt := range []struct{ who, action string }{{e.sam.Token, "approve"}, {e.alice.Token, "revoke"}} {
		// The archive still names the request's state, as before it was
		// archived.
		st, p := e.call("POST", "/api/v1/access-requests/"+ar.ID+"/"+tt.action, tt.who, proto.AccessDecision{Reason: "again"}, nil)
		if st != http.StatusConflict || !strings.Contains(p.Title, "is denied, not pending") {
			t.Fatalf("%s of a denied request = %d %+v, want 409 naming its state", tt.action, st, p)
		}
	}
	// A store of an earlier version kept ended requests live.
	old := accessRequest{ID: "req_old", UserID: "usr_x", State: proto.RequestRevoked, Created: time.Now()}
	if err := e.srv.store.Update(func(tx store.Tx) error { return store.Put(tx, store.Requests, old.ID, &old) }); err != nil {
		t.Fatal(err)
	}
	e.stop()
	e.start()
	if n := live(); n != 0 {
		t.Fatalf("%d live requests after restart, want 0", n)
	}
	got, err := e.srv.archivedRequests(func(*accessRequest) bool { return true })
	if err != nil || len(got) != 2 {
		t.Fatalf("archive = %+v, %v; want the denied and the migrated request", got, err)
	}
}

// TestArchiveNewestFirst: the archive is read newest first and a listing
// stops at maxListedEnded, whatever the history holds.
func TestArchiveNewestFirst(t *testing.T) {
	e := newTestEnv(t)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const n = maxListedEnded + 50
	err := e.srv.store.Update(func(tx store.Tx) error {
		for i := range n {
			// Stored in an order unrelated to their times.
			j := (i * 7) % n
			ar := accessRequest{ID: fmt.Sprintf("req_%04d", j), UserID: "usr_x", State: proto.RequestDenied, Created: t0.Add(time.Duration(j) * time.Minute)}
			if err := storeRequest(tx, &ar); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.srv.archivedRequests(func(*accessRequest) bool { return true })
	if err != nil || len(got) != maxListedEnded {
		t.Fatalf("listed %d, %v; want the newest %d", len(got), err, maxListedEnded)
	}
	for i, ar := range got {
		if want := fmt.Sprintf("req_%04d", n-1-i); ar.ID != want {
			t.Fatalf("entry %d = %s, want %s (newest first)", i, ar.ID, want)
		}
	}
}

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

// TestArchivedRequestByID: a decision on an ended request finds it in
// the archive by its id, also in an archive written before the archive
// was indexed by id (read through until the coordinator indexes it at
// start), and an unknown id is answered from the index alone.
func TestArchivedRequestByID(t *testing.T) {
	e := newTestEnv(t)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// As an earlier version archived them: no id entries, no marker.
	err := e.srv.store.Update(func(tx store.Tx) error {
		for i := range 30 {
			ar := accessRequest{ID: fmt.Sprintf("req_%04d", i), UserID: "usr_x", State: proto.RequestDenied, Created: t0.Add(time.Duration(i) * time.Minute)}
			if err := store.Put(tx, store.RequestArchive, archiveKey(&ar), &ar); err != nil {
				return err
			}
		}
		return tx.Delete(store.Meta, metaArchiveIDs)
	})
	if err != nil {
		t.Fatal(err)
	}
	lookup := func(id string) *accessRequest {
		t.Helper()
		ar, err := e.srv.archivedRequest(id)
		if err != nil {
			t.Fatal(err)
		}
		return ar
	}
	if ar := lookup("req_0003"); ar == nil || ar.State != proto.RequestDenied {
		t.Fatalf("before indexing, req_0003 = %+v, want it denied (read through)", ar)
	}
	e.stop()
	e.start()
	if ar := lookup("req_0017"); ar == nil || ar.ID != "req_0017" {
		t.Fatalf("after indexing, req_0017 = %+v", ar)
	}
	if ar := lookup("req_nope"); ar != nil {
		t.Fatalf("req_nope = %+v, want none", ar)
	}
	// Indexed, the archive is no longer read through: a request that has
	// no id entry is not found.
	err = e.srv.store.Update(func(tx store.Tx) error { return tx.Delete(store.RequestArchiveIDs, "req_0020") })
	if err != nil {
		t.Fatal(err)
	}
	if ar := lookup("req_0020"); ar != nil {
		t.Fatalf("req_0020 without its id entry = %+v: the archive was read through", ar)
	}
	st, p := e.call("POST", "/api/v1/access-requests/req_0017/approve", e.login("admin@example.com").Token, proto.AccessDecision{}, nil)
	if st != http.StatusConflict || !strings.Contains(p.Title, "is denied, not pending") {
		t.Fatalf("approve of an archived request = %d %+v, want 409 naming its state", st, p)
	}
}
