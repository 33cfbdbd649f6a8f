package cli

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/clustral/clustral/proto"
)

// fakeAdmin is the coordinator's device and audit API as the
// coordinator answers it, over the fake coordinator of a testEnv, for
// the goldens a real coordinator cannot reproduce (see TestGoldenAdmin).
// It keeps a fixed set of devices (goldenDevices) and audit events;
// changes answer what the coordinator would, without storing them, so
// every command sees the same data.
type fakeAdmin struct {
	e *testEnv

	mu   sync.Mutex
	reqs []string // "POST /api/v1/roles ?query {body}", in order
	// brokenAt, if set, is the audit record GET /audit/verify reports
	// as edited.
	brokenAt uint64
}

// IDs in the coordinator's form: a type prefix and 20 hex digits.
const (
	clsProd    = "cls_1f0e2d3c4b5a69788796"
	clsStaging = "cls_2a3b4c5d6e7f80919a0b"
	clsDev     = "cls_3c4d5e6f708192a3b4c5"
	clsNew     = "cls_4d5e6f708192a3b4c5d6"
	rolViewer  = "rol_0a1b2c3d4e5f60718293"
	rolDeploy  = "rol_1b2c3d4e5f6071829304"
	rolAdmin   = "rol_2c3d4e5f607182930415"
	rolNew     = "rol_9e8d7c6b5a4f3e2d1c0b"
	usrAlice   = "usr_5a6b7c8d9e0f1a2b3c4d"
	usrBob     = "usr_6b7c8d9e0f1a2b3c4d5e"
	usrCarol   = "usr_7c8d9e0f1a2b3c4d5e6f"
	devLaptop  = "dev_8d9e0f1a2b3c4d5e6f70"
	devDesktop = "dev_9e0f1a2b3c4d5e6f7081"
	devBob     = "dev_a0f1a2b3c4d5e6f70819"
	asgNew     = "asg_b1a2b3c4d5e6f708192a"
	reqPending = "req_c2b3c4d5e6f708192a3b"
	reqActive  = "req_d3c4d5e6f708192a3b4c"
	reqDenied  = "req_e4d5e6f708192a3b4c5d"
	reqNew     = "req_f5e6f708192a3b4c5d6e"
	// Join tokens as the goldens show them (made up; the coordinator's
	// are random).
	joinNew     = "cjt_Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2Fy"
	joinRotated = "cjt_cm90YXRlZHRva2VuZm9ycHJvZGFnZW50c29ubHkx"
)

func adminKey(b byte) proto.Key {
	var k proto.Key
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

func prefixes(s ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, a := range s {
		addr := netip.MustParseAddr(a)
		ps = append(ps, netip.PrefixFrom(addr, addr.BitLen()))
	}
	return ps
}

func at(d time.Duration) time.Time { return fixedNow.Add(d) }

func atp(d time.Duration) *time.Time { t := at(d); return &t }

// The clusters, roles, users, devices and access requests the goldens
// show: the real coordinator is set up with them (setupClusters and the
// like), and the fake serves the devices.

func goldenClusters() []proto.Cluster {
	return []proto.Cluster{
		{ID: clsDev, Name: "dev", Created: at(-72 * time.Hour)},
		{ID: clsProd, Name: "prod", Labels: map[string]string{"env": "prod", "team": "payments"}, Created: at(-30 * 24 * time.Hour), Agents: []proto.Agent{
			{NodeID: "agt_0011223344556677889a", Hostname: "prod-node-a", Addresses: prefixes("100.64.0.1", "fd7a:115c:a1e0::1"), Online: true},
			{NodeID: "agt_1122334455667788990a", Hostname: "prod-node-b", Addresses: prefixes("100.64.0.7", "fd7a:115c:a1e0::7"), Online: false},
		}},
		{ID: clsStaging, Name: "staging", Labels: map[string]string{"env": "staging"}, Created: at(-10 * 24 * time.Hour), Agents: []proto.Agent{
			{NodeID: "agt_2233445566778899aa0b", Hostname: "staging-node-a", Addresses: prefixes("100.64.0.3", "fd7a:115c:a1e0::3"), Online: true},
		}},
	}
}

func goldenRoles() []proto.Role {
	return []proto.Role{
		{ID: rolAdmin, Name: "admin", Description: "full control, on request", Groups: []string{"system:masters"}, ApproverGroups: []string{"sre"}, Admin: true},
		{ID: rolDeploy, Name: "dev-deployer", Description: "roll out to dev", Groups: []string{"clustral:edit"}, Restrictions: &proto.Restrictions{
			Namespaces: []string{"dev"}, APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"get", "list", "patch"},
			TimeWindows: []proto.TimeWindow{{Days: []string{"mon", "tue", "wed", "thu", "fri"}, Start: "09:00", End: "18:00", TimeZone: "Europe/Berlin"}},
		}},
		{ID: rolViewer, Name: "viewer", Description: "read-only everywhere", Groups: []string{"clustral:view"}},
	}
}

func goldenUsers() []proto.User {
	return []proto.User{
		{ID: usrAlice, Login: "alice@example.com", Email: "alice@example.com", Name: "Alice Liddell", Groups: []string{"dev", "sre"}, Admin: true, Created: at(-90 * 24 * time.Hour), LastSeen: at(-5 * time.Minute)},
		{ID: usrBob, Login: "bob@example.com", Email: "bob@example.com", Name: "Bob Builder", Groups: []string{"dev"}, Created: at(-60 * 24 * time.Hour), LastSeen: at(-26 * time.Hour)},
		{ID: usrCarol, Login: "carol@example.com", Email: "carol@example.com", Name: "Carol Danvers", Disabled: true, Created: at(-45 * 24 * time.Hour), LastSeen: at(-14 * 24 * time.Hour)},
	}
}

func goldenDevices() []proto.Device {
	return []proto.Device{
		{ID: devLaptop, User: "alice@example.com", Hostname: "alice-laptop", Key: adminKey(1), Addresses: prefixes("100.64.0.2", "fd7a:115c:a1e0::2"), Online: true, Created: at(-time.Hour), Expires: at(7 * time.Hour)},
		{ID: devDesktop, User: "alice@example.com", Hostname: "old-laptop", Key: adminKey(2), Addresses: prefixes("100.64.0.4", "fd7a:115c:a1e0::4"), Online: false, Created: at(-50 * time.Hour), Expires: at(-42 * time.Hour)},
		{ID: devBob, User: "bob@example.com", Hostname: "bob-desktop", Key: adminKey(3), Addresses: prefixes("100.64.0.5", "fd7a:115c:a1e0::5"), Online: true, Created: at(-3 * time.Hour), Expires: at(5 * time.Hour)},
	}
}

func goldenAccessRequests() []proto.AccessRequest {
	return []proto.AccessRequest{
		{ID: reqPending, User: "bob@example.com", Role: "admin", Cluster: "prod", Reason: "INC-1234: restart the ingress", Duration: proto.Duration(time.Hour),
			State: proto.RequestPending, Created: at(-10 * time.Minute), PendingUntil: at(50 * time.Minute)},
		{ID: reqActive, User: "alice@example.com", Role: "admin", Cluster: "staging", Reason: "load test", Duration: proto.Duration(2 * time.Hour),
			State: proto.RequestApproved, Created: at(-40 * time.Minute), PendingUntil: at(20 * time.Minute), DecidedBy: "carol@example.com", DecidedAt: at(-30 * time.Minute),
			DecisionReason: "ok", GrantExpires: atp(90 * time.Minute)},
		{ID: reqDenied, User: "bob@example.com", Role: "admin", Cluster: "prod", Reason: "curious", Duration: proto.Duration(8 * time.Hour),
			State: proto.RequestDenied, Created: at(-3 * time.Hour), PendingUntil: at(-2 * time.Hour), DecidedBy: "alice@example.com", DecidedAt: at(-170 * time.Minute),
			DecisionReason: "use staging"},
	}
}

// fakeAuditEvents are the log's events, newest first as the coordinator
// pages them by default.
func fakeAuditEvents() []proto.AuditEvent {
	evs := []proto.AuditEvent{
		{Seq: 1201, Code: proto.AuditLoginBrowser, Category: proto.CategoryAuth, Time: at(-2 * time.Hour), Actor: "alice@example.com", Object: usrAlice,
			Outcome: proto.OutcomeSuccess, Metadata: map[string]string{"groups": "dev,sre"}},
		{Seq: 1202, Code: proto.AuditClusterCreated, Category: proto.CategoryCluster, Time: at(-100 * time.Minute), Actor: "alice@example.com", Cluster: "dev", Object: clsDev,
			Outcome: proto.OutcomeSuccess, Metadata: map[string]string{"name": "dev"}},
		{Seq: 1203, Code: proto.AuditAccessDenied, Category: proto.CategoryAccess, Time: at(-90 * time.Minute), Actor: "alice@example.com", Cluster: "prod", Object: reqDenied,
			Outcome: proto.OutcomeDenied, Metadata: map[string]string{"reason": "use staging"}},
		{Seq: 1204, Code: proto.AuditRequest, Category: proto.CategoryRequest, Time: at(-30 * time.Minute), Actor: "alice@example.com", Cluster: "prod",
			Resource: &proto.AuditResource{Verb: "list", Resource: "pods", Namespace: "default", Path: "/api/v1/namespaces/default/pods"},
			Outcome:  proto.OutcomeSuccess, Status: 200, Bytes: 4817, Latency: proto.Duration(12345 * time.Microsecond),
			Correlation: "c0ffee00c0ffee00", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", Source: "agt_0011223344556677889a", SourceSeq: 77},
		{Seq: 1205, Code: proto.AuditProxyDenied, Category: proto.CategoryDenial, Time: at(-20 * time.Minute), Actor: "bob@example.com", Cluster: "prod",
			Resource: &proto.AuditResource{Verb: "delete", APIGroup: "apps", Resource: "deployments", Namespace: "payments", Name: "api", Path: "/apis/apps/v1/namespaces/payments/deployments/api"},
			Outcome:  proto.OutcomeDenied, Status: 403, Error: proto.CodeOutsideTimeWindow, Source: "agt_0011223344556677889a", SourceSeq: 78},
	}
	prev := "9f2c1d4e5b6a79808f7e6d5c4b3a29181f0e2d3c4b5a69788796a5b4c3d2e1f0"
	for i := range evs {
		evs[i].PrevHash = prev
		evs[i].Hash = proto.AuditHash(evs[i])
		prev = evs[i].Hash
	}
	slices.Reverse(evs)
	return evs
}

// installAdmin adds the device and audit routes to e's fake
// coordinator.
func installAdmin(e *testEnv) *fakeAdmin {
	e.t.Helper()
	a := &fakeAdmin{e: e}
	// The fake coordinator serves a ServeMux, which takes new routes while
	// it serves.
	mux := e.coord.srv.Config.Handler.(*http.ServeMux)
	v := proto.APIVersion
	route := func(pattern string, h func(w http.ResponseWriter, r *http.Request)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if _, ok := e.coord.auth(r); !ok {
				writeTestProblem(w, http.StatusUnauthorized, proto.CodeSessionExpired, "session expired or revoked", "run: clustral login")
				return
			}
			h(w, r)
		})
	}
	notFound := func(w http.ResponseWriter, what, ref string) {
		writeTestProblem(w, http.StatusNotFound, proto.CodeNotFound, what+" "+strconv.Quote(ref)+" not found", "")
	}

	route("GET "+v+"/devices", func(w http.ResponseWriter, r *http.Request) {
		a.record(r, nil)
		ds := goldenDevices()
		if u := r.URL.Query().Get("user"); u != "" {
			ds = slices.DeleteFunc(ds, func(d proto.Device) bool { return d.User != u })
		}
		writeTestJSON(w, ds)
	})
	route("DELETE "+v+"/devices/{id}", func(w http.ResponseWriter, r *http.Request) {
		a.record(r, nil)
		if !slices.ContainsFunc(goldenDevices(), func(d proto.Device) bool { return d.ID == r.PathValue("id") }) {
			notFound(w, "device", r.PathValue("id"))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})

	route("GET "+v+"/audit/events", func(w http.ResponseWriter, r *http.Request) {
		a.record(r, nil)
		evs := fakeAuditEvents()
		q := r.URL.Query()
		if cs := q.Get(proto.AuditParamCategory); cs != "" {
			evs = slices.DeleteFunc(evs, func(e proto.AuditEvent) bool { return !slices.Contains(strings.Split(cs, ","), string(e.Category)) })
		}
		if n, err := strconv.Atoi(q.Get(proto.AuditParamLimit)); err == nil && n < len(evs) {
			evs = evs[:n]
		}
		writeTestJSON(w, proto.AuditPage{Events: evs, Follow: "cur_1205"})
	})
	verify := func(w http.ResponseWriter, r *http.Request) {
		var against *proto.AuditCheckpoint
		if r.Method == http.MethodPost {
			var req proto.AuditVerifyRequest
			if !a.decode(w, r, &req) {
				return
			}
			against = req.Checkpoint
		} else {
			a.record(r, nil)
		}
		v := proto.AuditVerification{OK: true, Checked: 1205, First: 1, Last: 1205, Anchor: "9f2c1d4e5b6a79808f7e6d5c4b3a29181f0e2d3c4b5a69788796a5b4c3d2e1f0",
			Checkpoints: 144, SignedSeq: 1205, SignedAt: fixedNow.Add(-4 * time.Minute), Key: proto.AuditKeyID(fakeCheckpointKey.Public().(ed25519.PublicKey)), Against: against}
		a.mu.Lock()
		if bad := a.brokenAt; bad != 0 {
			v.OK, v.Checked, v.Last, v.BadSeq = false, int(bad-1), bad-1, bad
			v.Problem = "hash does not match its content (edited)"
		}
		a.mu.Unlock()
		writeTestJSON(w, v)
	}
	route("GET "+v+"/audit/verify", verify)
	route("POST "+v+"/audit/verify", verify)
	route("POST "+v+"/audit/checkpoints", func(w http.ResponseWriter, r *http.Request) {
		a.record(r, nil)
		writeTestJSON(w, fakeCheckpoint())
	})
	return a
}

// fakeCheckpointKey signs the fake coordinator's audit checkpoints
// (Ed25519 signatures are deterministic, so the goldens are stable).
var fakeCheckpointKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

// fakeCheckpoint is the checkpoint the fake coordinator exports.
func fakeCheckpoint() proto.AuditCheckpoint {
	return proto.SignAuditCheckpoint(fakeCheckpointKey, 1180, "3b7e2f1a9c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7", fixedNow)
}

// record notes r (and its decoded body) for the test to check.
func (a *fakeAdmin) record(r *http.Request, body any) {
	s := r.Method + " " + r.URL.Path
	if r.URL.RawQuery != "" {
		s += " ?" + r.URL.RawQuery
	}
	if body != nil {
		b, _ := json.Marshal(body)
		s += " " + string(b)
	}
	a.mu.Lock()
	a.reqs = append(a.reqs, s)
	a.mu.Unlock()
}

// decode reads r's JSON body into v and records it, or answers 400.
func (a *fakeAdmin) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		writeTestProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "invalid request body: "+err.Error(), "")
		return false
	}
	a.record(r, v)
	return true
}

// requests returns the requests seen since the last call.
func (a *fakeAdmin) requests() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.reqs
	a.reqs = nil
	return r
}
