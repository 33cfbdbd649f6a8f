package cli

import (
	"encoding/json"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator"
	"github.com/clustral/clustral/coordinator/coordinatortest"
	"github.com/clustral/clustral/pkg/version"
	"github.com/clustral/clustral/proto"
)

// TestGoldenAdmin runs devices list, devices revoke by hostname, the
// audit commands and version against the fake coordinator with its
// management API, and compares their output with
// testdata/<name>.<format>.golden, or, for the commands that print one
// success line and have no -o, with testdata/<name>.golden (go test
// ./cli -run TestGoldenAdmin -update rewrites them). The JSON goldens are
// the commands' stable contract.
//
// The other management goldens run against a real coordinator
// (TestGoldenRoles, TestGoldenClusters, TestGoldenUsers,
// TestGoldenDevices, TestGoldenAccess, TestGoldenAssign); these stay on
// the fake because a coordinator cannot hold what their goldens show:
// the audit goldens a log whose records start at 1201 and chain from a
// made-up anchor, with 144 checkpoints signed by a fixed key; the device
// goldens here a device whose session ended 42 hours ago, which the
// coordinator's sweep deletes within a second.
func TestGoldenAdmin(t *testing.T) {
	e := newTestEnv(t)
	e.login("alice@example.com", fixedNow.Add(7*time.Hour+59*time.Minute))
	a := installAdmin(e)
	oldVersion, oldCommit := version.Version, version.Commit
	version.Version, version.Commit = "v1.2.0", "abc123"
	t.Cleanup(func() { version.Version, version.Commit = oldVersion, oldCommit })

	ckFile := filepath.Join(e.base, "checkpoint.json")
	ck, err := json.Marshal(fakeCheckpoint())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ckFile, ck, 0o644); err != nil {
		t.Fatal(err)
	}
	edited := fakeCheckpoint()
	edited.Seq = 1100
	ck, err = json.Marshal(edited)
	if err != nil {
		t.Fatal(err)
	}
	editedFile := filepath.Join(e.base, "edited.json")
	if err := os.WriteFile(editedFile, ck, 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []goldenCase{
		{name: "devices-list", args: []string{"devices", "list"}},
		{name: "devices-revoke-hostname", args: []string{"devices", "revoke", "old-laptop"}, plain: true, sent: []string{"DELETE /api/v1/devices/" + devDesktop}},

		{name: "audit", args: []string{"audit"}, jsonLines: true, sent: []string{"GET /api/v1/audit/events ?limit=50"}},
		{name: "audit-denials", args: []string{"audit", "--category", "denial,access", "--severity", "W", "--limit", "10"}, jsonLines: true,
			sent: []string{"GET /api/v1/audit/events ?category=denial%2Caccess&limit=10&severity=W"}},
		{name: "audit-since", args: []string{"audit", "--since", "2h", "--user", "bob@example.com"}, jsonLines: true,
			sent: []string{"GET /api/v1/audit/events ?from=2030-01-02T08%3A00%3A00Z&limit=50&user=bob%40example.com"}},
		{name: "audit-verify", args: []string{"audit", "verify"}, sent: []string{"GET /api/v1/audit/verify"}},
		{name: "audit-verify-broken", args: []string{"audit", "verify"}, brokenAt: 1042, code: exitError},
		{name: "audit-verify-checkpoint", args: []string{"audit", "verify", "--checkpoint", ckFile},
			sent: []string{`POST /api/v1/audit/verify {"checkpoint":{"seq":1180,"hash":"3b7e2f1a9c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7"`}},
		{name: "audit-verify-edited-checkpoint", args: []string{"audit", "verify", "--checkpoint", editedFile}, plain: true, code: exitError},
		{name: "audit-checkpoint", args: []string{"audit", "checkpoint"}, plain: true, sent: []string{"POST /api/v1/audit/checkpoints"}},
		{name: "audit-checkpoint-file", args: []string{"audit", "checkpoint", "--file", filepath.Join(e.base, "exported.json")}, plain: true},

		{name: "version", args: []string{"version"}},
	}
	runGolden(t, tests, func(t *testing.T, tt goldenCase) (*testEnv, func() []string) {
		a.requests()
		a.mu.Lock()
		a.brokenAt = tt.brokenAt
		a.mu.Unlock()
		return e, a.requests
	})
}

// TestGoldenRoles runs the roles commands against a real coordinator
// in-process, a fresh one for each, which holds the roles admin,
// dev-deployer and viewer and alice@example.com as its administrator.
func TestGoldenRoles(t *testing.T) {
	tests := []goldenCase{
		{name: "roles-list", args: []string{"roles", "list"}},
		{name: "roles-show", args: []string{"roles", "show", "dev-deployer"}, sent: []string{"GET /api/v1/roles/dev-deployer"}},
		{name: "roles-create", args: []string{"roles", "create", "deployer", "--group", "clustral:edit", "--description", "roll out to dev",
			"--namespace", "dev,staging", "--api-group", "apps", "--resource", "deployments,deployments/scale", "--verb", "get,list,patch",
			"--resource-name", "api", "--non-resource-url", "/metrics,/logs/*", "--window", "mon-fri 09:00-18:00 Europe/Berlin", "--approver-group", "sre",
			"--recording", "required", "--record-stdin"},
			sent: []string{`POST /api/v1/roles {"id":"","name":"deployer","description":"roll out to dev","groups":["clustral:edit"],` +
				`"restrictions":{"namespaces":["dev","staging"],"api_groups":["apps"],"resources":["deployments","deployments/scale"],"verbs":["get","list","patch"],` +
				`"resource_names":["api"],"non_resource_urls":["/metrics","/logs/*"],"time_windows":[{"days":["mon","tue","wed","thu","fri"],"start":"09:00","end":"18:00","time_zone":"Europe/Berlin"}]},` +
				`"approver_groups":["sre"],"recording":"required","record_stdin":true}`}},
		{name: "roles-update", args: []string{"roles", "update", "viewer", "--rename", "reader", "--group", "clustral:view", "--namespace", "dev,staging"},
			sent: []string{`PUT /api/v1/roles/viewer {"id":"","name":"reader","groups":["clustral:view"],"restrictions":{"namespaces":["dev","staging"]}}`}},
		{name: "roles-delete", args: []string{"roles", "delete", "viewer"}, plain: true, sent: []string{"DELETE /api/v1/roles/viewer"}},
	}
	runGolden(t, tests, func(t *testing.T, _ goldenCase) (*testEnv, func() []string) {
		e := newRealEnv(t, func(c *coordinator.Config) {
			c.Admins = append(c.Admins, "alice@example.com")
			c.NewID = coordinatortest.IDs(rolAdmin, rolDeploy, rolViewer, rolNew)
		})
		alice := e.real.Login("alice@example.com", "dev", "sre")
		e.useSession(alice)
		for _, ro := range goldenRoles() {
			ro.ID = ""
			e.real.Do(alice.Token, http.MethodPost, proto.APIVersion+"/roles", ro, nil)
		}
		e.real.Requests()
		return e, e.real.Requests
	})
}

// TestGoldenUsers runs the users commands against a real coordinator
// in-process, a fresh one for each, to which alice@example.com (its
// administrator), bob@example.com and carol@example.com (disabled since)
// logged in.
func TestGoldenUsers(t *testing.T) {
	tests := []goldenCase{
		{name: "users-list", args: []string{"users", "list"}},
		{name: "users-show", args: []string{"users", "show", "alice@example.com"}},
		{name: "users-disable", args: []string{"users", "disable", "bob@example.com"}, plain: true, sent: []string{"POST /api/v1/users/bob@example.com/disable"}},
		{name: "users-enable", args: []string{"users", "enable", "carol@example.com"}, plain: true, sent: []string{"POST /api/v1/users/carol@example.com/enable"}},
	}
	runGolden(t, tests, func(t *testing.T, _ goldenCase) (*testEnv, func() []string) {
		e := newRealEnv(t, func(c *coordinator.Config) {
			c.Admins = append(c.Admins, "alice@example.com")
			c.NewID = coordinatortest.IDs(usrAlice, usrBob, usrCarol)
		})
		e.useSession(setupUsers(e))
		e.real.Requests()
		return e, e.real.Requests
	})
}

// setupUsers has the users of goldenUsers log in to e's real coordinator
// when they were created and last seen (in that order, so they get their
// ids if the coordinator's NewID hands them out), and disables carol. It
// returns alice's session.
func setupUsers(e *testEnv) proto.Session {
	e.t.Helper()
	var alice proto.Session
	for _, u := range goldenUsers() {
		claims := map[string]any{"email": u.Email, "name": u.Name, "groups": append([]string{}, u.Groups...)}
		e.setRealNow(u.Created.Sub(fixedNow))
		e.real.LoginClaims(claims)
		e.setRealNow(u.LastSeen.Sub(fixedNow))
		s := e.real.LoginClaims(claims)
		if u.Login == "alice@example.com" {
			alice = s
		}
	}
	e.setRealNow(0)
	for _, u := range goldenUsers() {
		if u.Disabled {
			e.real.Do(alice.Token, http.MethodPost, proto.APIVersion+"/users/"+u.Login+"/disable", nil, nil)
		}
	}
	return alice
}

// TestGoldenAccess runs the access commands against a real coordinator
// in-process, a fresh one for each, that holds the access requests of
// goldenAccessRequests, made and decided when they say.
func TestGoldenAccess(t *testing.T) {
	tests := []goldenCase{
		{name: "access-request", args: []string{"access", "request", "--cluster", "prod", "--role", "admin", "--for", "1h", "--reason", "INC-1234: restart the ingress"},
			sent: []string{`POST /api/v1/access-requests {"role":"admin","cluster":"prod","duration":"1h0m0s","reason":"INC-1234: restart the ingress"}`}},
		{name: "access-list", args: []string{"access", "list"}},
		{name: "access-list-pending", args: []string{"access", "list", "--state", "pending"}, sent: []string{"GET /api/v1/access-requests ?state=pending"}},
		{name: "access-approve", args: []string{"access", "approve", reqPending, "--for", "30m", "--reason", "ok"},
			sent: []string{`POST /api/v1/access-requests/` + reqPending + `/approve {"duration":"30m0s","reason":"ok"}`}},
		{name: "access-deny", args: []string{"access", "deny", reqPending, "--reason", "use staging"},
			sent: []string{`POST /api/v1/access-requests/` + reqPending + `/deny {"reason":"use staging"}`}},
		{name: "access-revoke", args: []string{"access", "revoke", reqActive},
			sent: []string{`POST /api/v1/access-requests/` + reqActive + `/revoke {}`}},
	}
	runGolden(t, tests, func(t *testing.T, _ goldenCase) (*testEnv, func() []string) {
		e := newRealEnv(t, func(c *coordinator.Config) {
			c.Admins = append(c.Admins, "alice@example.com")
			c.PendingRequestTTL = time.Hour
			// In the order setupAccess makes them.
			c.NewID = coordinatortest.IDs(reqDenied, reqActive, reqPending, reqNew)
		})
		e.useSession(setupAccess(e))
		e.real.Requests()
		return e, e.real.Requests
	})
}

// setupAccess makes the clusters prod and staging, the role admin
// (approved by the group sre), and the access requests of
// goldenAccessRequests on e's real coordinator, oldest first, each at its
// time and decided at its time; carol@example.com (group sre) and
// alice@example.com (an administrator) decide them. It returns alice's
// session.
func setupAccess(e *testEnv) proto.Session {
	e.t.Helper()
	c, v := e.real, proto.APIVersion
	ars := goldenAccessRequests()
	slices.SortFunc(ars, func(a, b proto.AccessRequest) int { return a.Created.Compare(b.Created) })
	e.setRealNow(ars[0].Created.Sub(fixedNow))
	sessions := map[string]string{}
	for _, u := range []struct {
		login  string
		groups []string
	}{{"alice@example.com", []string{"dev", "sre"}}, {"bob@example.com", []string{"dev"}}, {"carol@example.com", []string{"sre"}}} {
		sessions[u.login] = c.Login(u.login, u.groups...).Token
	}
	admin := sessions["alice@example.com"]
	for _, name := range []string{"prod", "staging"} {
		c.Do(admin, http.MethodPost, v+"/clusters", proto.CreateClusterRequest{Name: name}, nil)
	}
	for _, ro := range goldenRoles() {
		ro.ID = ""
		c.Do(admin, http.MethodPost, v+"/roles", ro, nil)
	}
	// Each request is made, and decided, at its time, in time order.
	type event struct {
		at time.Time
		do func()
	}
	var events []event
	for _, ar := range ars {
		events = append(events, event{ar.Created, func() {
			var made proto.AccessRequest
			c.Do(sessions[ar.User], http.MethodPost, v+"/access-requests",
				proto.CreateAccessRequest{Role: ar.Role, Cluster: ar.Cluster, Duration: ar.Duration, Reason: ar.Reason}, &made)
			if made.ID != ar.ID {
				e.t.Fatalf("request made as %s, want %s", made.ID, ar.ID)
			}
		}})
		action := map[string]string{proto.RequestApproved: "approve", proto.RequestDenied: "deny"}[ar.State]
		if action != "" {
			events = append(events, event{ar.DecidedAt, func() {
				c.Do(sessions[ar.DecidedBy], http.MethodPost, v+"/access-requests/"+ar.ID+"/"+action, proto.AccessDecision{Reason: ar.DecisionReason}, nil)
			}})
		}
	}
	slices.SortStableFunc(events, func(a, b event) int { return a.at.Compare(b.at) })
	for _, ev := range events {
		e.setRealNow(ev.at.Sub(fixedNow))
		ev.do()
	}
	e.setRealNow(0)
	return c.Login("alice@example.com", "dev", "sre")
}

// TestGoldenAssign runs assign and unassign against a real coordinator
// in-process, a fresh one for each, that holds the clusters and roles of
// goldenClusters and goldenRoles, alice@example.com (its administrator) and
// bob@example.com, and for unassign the assignment it removes.
func TestGoldenAssign(t *testing.T) {
	tests := []goldenCase{
		{name: "assign-user", args: []string{"assign", "--user", "bob@example.com", "--role", "viewer", "--cluster", "prod"},
			sent: []string{`POST /api/v1/assignments {"id":"","user":"bob@example.com","role":"viewer","cluster":"prod","created":"0001-01-01T00:00:00Z"}`}},
		{name: "assign-group", args: []string{"assign", "--group", "sre", "--role", "admin", "--selector", "env=prod", "--for", "8h"},
			sent: []string{`POST /api/v1/assignments {"id":"","group":"sre","role":"admin","cluster_selector":{"env":"prod"},"expires":"2030-01-02T18:00:00Z"`}},
		{name: "unassign", args: []string{"unassign", asgNew}, plain: true, sent: []string{"DELETE /api/v1/assignments/" + asgNew}},
	}
	runGolden(t, tests, func(t *testing.T, tt goldenCase) (*testEnv, func() []string) {
		e := newRealEnv(t, func(c *coordinator.Config) {
			c.Admins = append(c.Admins, "alice@example.com")
			c.NewID = coordinatortest.IDs(asgNew)
		})
		c, v := e.real, proto.APIVersion
		alice := c.Login("alice@example.com", "dev", "sre")
		c.Login("bob@example.com", "dev")
		for _, cl := range goldenClusters() {
			c.Do(alice.Token, http.MethodPost, v+"/clusters", proto.CreateClusterRequest{Name: cl.Name, Labels: cl.Labels}, nil)
		}
		for _, ro := range goldenRoles() {
			ro.ID = ""
			c.Do(alice.Token, http.MethodPost, v+"/roles", ro, nil)
		}
		if tt.name == "unassign" {
			c.Do(alice.Token, http.MethodPost, v+"/assignments", proto.Assignment{User: "bob@example.com", Role: "viewer", Cluster: "prod"}, nil)
		}
		e.useSession(alice)
		c.Requests()
		return e, c.Requests
	})
}

// TestGoldenClusters runs the clusters commands against a real
// coordinator in-process, a fresh one for each, that holds the clusters
// and agents of goldenClusters, with their ids, addresses and online
// states, and alice@example.com as its administrator.
func TestGoldenClusters(t *testing.T) {
	tests := []goldenCase{
		{name: "clusters-list", args: []string{"clusters", "list"}},
		{name: "clusters-show", args: []string{"clusters", "show", "prod"}},
		{name: "clusters-add", args: []string{"clusters", "add", "qa", "--label", "env=qa", "--label", "team=payments"},
			sent: []string{`POST /api/v1/clusters {"name":"qa","labels":{"env":"qa","team":"payments"}}`}},
		{name: "clusters-add-manifest", args: []string{"clusters", "add", "qa", "--manifest", "--manifest-coordinator-url", "https://clustral.example.com"}, plain: true},
		{name: "clusters-label", args: []string{"clusters", "label", "prod", "tier=1", "team-"}, plain: true,
			sent: []string{`PUT /api/v1/clusters/prod/labels {"labels":{"env":"prod","tier":"1"}}`}},
		{name: "clusters-rotate-token", args: []string{"clusters", "rotate-token", "prod"}, sent: []string{"POST /api/v1/clusters/prod/rotate-token"}},
		{name: "clusters-revoke-token", args: []string{"clusters", "revoke-token", "prod"}, sent: []string{"POST /api/v1/clusters/prod/revoke-token"}},
		{name: "clusters-delete", args: []string{"clusters", "delete", "dev"}, plain: true, sent: []string{"DELETE /api/v1/clusters/dev"}},
	}
	runGolden(t, tests, func(t *testing.T, tt goldenCase) (*testEnv, func() []string) {
		e := newRealEnv(t, func(c *coordinator.Config) {
			c.Admins = append(c.Admins, "alice@example.com")
			c.IPv6Prefix = netip.MustParsePrefix("fd7a:115c:a1e0::/48")
			// In the order setupClusters makes them.
			c.NewID = coordinatortest.IDs(clsProd, clsStaging, clsDev, clsNew,
				"agt_0011223344556677889a", "agt_2233445566778899aa0b", "agt_1122334455667788990a")
			c.AddrRand = coordinatortest.Addrs(1, 3, 7)
		})
		// Join tokens are secrets the coordinator draws at random; the
		// goldens show made-up ones.
		switch tt.name {
		case "clusters-add", "clusters-add-manifest":
			e.joinToken = joinNew
		case "clusters-rotate-token":
			e.joinToken = joinRotated
		}
		e.useSession(setupClusters(e))
		e.real.Requests()
		return e, e.real.Requests
	})
}

// setupClusters makes the clusters of goldenClusters on e's real
// coordinator, oldest first, each when it was created, and registers
// their agents an hour ago, in the order prod-node-a, staging-node-a,
// prod-node-b, with the online ones connected. It returns the session of
// alice@example.com, an administrator.
func setupClusters(e *testEnv) proto.Session {
	e.t.Helper()
	c, v := e.real, proto.APIVersion
	cls := goldenClusters()
	slices.SortFunc(cls, func(a, b proto.Cluster) int { return a.Created.Compare(b.Created) })
	tokens := map[string]string{}
	for _, cl := range cls {
		e.setRealNow(cl.Created.Sub(fixedNow))
		alice := c.Login("alice@example.com")
		var resp proto.CreateClusterResponse
		c.Do(alice.Token, http.MethodPost, v+"/clusters", proto.CreateClusterRequest{Name: cl.Name, Labels: cl.Labels}, &resp)
		tokens[cl.Name] = resp.JoinToken
	}
	e.setRealNow(-time.Hour)
	type clusterAgent struct {
		cluster string
		proto.Agent
	}
	agents := map[string]clusterAgent{}
	for _, cl := range cls {
		for _, a := range cl.Agents {
			agents[a.NodeID] = clusterAgent{cl.Name, a}
		}
	}
	for _, id := range []string{"agt_0011223344556677889a", "agt_2233445566778899aa0b", "agt_1122334455667788990a"} {
		a := agents[id]
		reg := c.RegisterAgent(tokens[a.cluster], a.Hostname)
		if reg.NodeID != id || !slices.Equal(reg.Addresses, a.Addresses) {
			e.t.Fatalf("agent %s registered as %s %v, want %s %v", a.Hostname, reg.NodeID, reg.Addresses, id, a.Addresses)
		}
		if a.Online {
			c.Connect(reg.NodeToken)
		}
	}
	e.setRealNow(0)
	return c.Login("alice@example.com")
}

// TestGoldenDevices runs devices list --user and devices revoke against
// a real coordinator in-process, a fresh one for each, that holds the
// devices of goldenDevices that have not expired, registered when they
// were created and connected, and alice@example.com as its
// administrator. (The device list of all users, and revoking by
// hostname, show an expired device and stay on the fake: see
// TestGoldenAdmin.)
func TestGoldenDevices(t *testing.T) {
	tests := []goldenCase{
		{name: "devices-list-user", args: []string{"devices", "list", "--user", "bob@example.com"}, sent: []string{"GET /api/v1/devices ?user=bob%40example.com"}},
		{name: "devices-revoke", args: []string{"devices", "revoke", devBob}, plain: true, sent: []string{"DELETE /api/v1/devices/" + devBob}},
	}
	// The devices that have not expired, oldest first, in the order they
	// register, with their ids and addresses.
	var devs []proto.Device
	for _, d := range goldenDevices() {
		if d.Expires.After(fixedNow) {
			devs = append(devs, d)
		}
	}
	slices.SortFunc(devs, func(a, b proto.Device) int { return a.Created.Compare(b.Created) })
	var ids []string
	var offs []uint64
	for _, d := range devs {
		ids = append(ids, d.ID)
		offs = append(offs, uint64(d.Addresses[0].Addr().As4()[3]))
	}
	runGolden(t, tests, func(t *testing.T, _ goldenCase) (*testEnv, func() []string) {
		e := newRealEnv(t, func(c *coordinator.Config) {
			c.Admins = append(c.Admins, "alice@example.com")
			c.IPv6Prefix = netip.MustParsePrefix("fd7a:115c:a1e0::/48")
			c.NewID = coordinatortest.IDs(ids...)
			c.AddrRand = coordinatortest.Addrs(offs...)
		})
		for _, d := range devs {
			// A device lasts as long as the session it registered under.
			e.setRealNow(d.Created.Sub(fixedNow))
			s := e.login(d.User, d.Expires)
			e.setRealNow(d.Created.Sub(fixedNow))
			var reg proto.RegisterResponse
			e.real.Do(s, http.MethodPost, proto.APIVersion+"/devices", proto.RegisterDeviceRequest{PublicKey: d.Key, Hostname: d.Hostname}, &reg)
			if reg.NodeID != d.ID || !slices.Equal(reg.Addresses, d.Addresses) {
				t.Fatalf("device %s registered as %s %v, want %s %v", d.Hostname, reg.NodeID, reg.Addresses, d.ID, d.Addresses)
			}
			if d.Online {
				e.real.Connect(reg.NodeToken)
			}
		}
		e.setRealNow(0)
		e.login("alice@example.com", fixedNow.Add(8*time.Hour))
		e.real.Requests()
		return e, e.real.Requests
	})
}

// goldenCase is a command whose output testdata holds.
type goldenCase struct {
	name string
	args []string
	// plain commands have no -o and print one line.
	plain bool
	// brokenAt makes the audit log fail verification at that record.
	brokenAt uint64
	// jsonLines: -o json writes one compact document a line.
	jsonLines bool
	// code is the exit status.
	code int
	// sent are substrings of the requests the command must send, as
	// "METHOD /path ?query body".
	sent []string
}

// runGolden runs each case, in table and JSON format unless it is plain,
// in the environment env returns for it, and compares its output with
// testdata/<name>[.<format>].golden. env's second result returns the
// requests the coordinator received since env returned.
func runGolden(t *testing.T, tests []goldenCase, env func(*testing.T, goldenCase) (*testEnv, func() []string)) {
	t.Helper()
	for _, tt := range tests {
		formats := []string{"table", "json"}
		if tt.plain {
			formats = []string{""}
		}
		for _, format := range formats {
			name, args := tt.name, tt.args
			if format != "" {
				name += "." + format
				args = append(args[:len(args):len(args)], "-o", format)
			}
			t.Run(name, func(t *testing.T) {
				e, requests := env(t, tt)
				code, out, errb := e.run(args...)
				if code != tt.code {
					t.Fatalf("exit %d, want %d; stderr:\n%s", code, tt.code, errb)
				}
				if strings.Contains(out+errb, "\033[") {
					t.Errorf("colour escapes in output that is not a terminal:\n%q", out+errb)
				}
				sent := strings.Join(requests(), "\n")
				for _, s := range tt.sent {
					if !strings.Contains(sent, s) {
						t.Errorf("requests sent:\n%s\nwant one with %s", sent, s)
					}
				}
				if format == "json" {
					checkJSONOutput(t, out, tt.jsonLines)
				}
				got := out
				if errb != "" {
					got += "--- stderr\n" + errb
				}
				golden(t, name, maskCA(e.mask(got)))
			})
		}
	}
}

// TestGoldenLogout checks logout's lines, without a running up.
func TestGoldenLogout(t *testing.T) {
	e := newRealEnv(t, nil)
	alice := e.real.Login("alice@example.com")
	e.useSession(alice)
	code, out, errb := e.run("logout")
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errb)
	}
	if strings.Contains(out+errb, "\033[") {
		t.Errorf("colour escapes in output that is not a terminal:\n%q", out+errb)
	}
	golden(t, "logout", e.mask(out+errb))
	// The coordinator revoked the session.
	req, err := http.NewRequest(http.MethodGet, e.coordURL+proto.APIVersion+"/whoami", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+alice.Token)
	resp, err := e.real.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("whoami with the logged-out session: %s, want 401", resp.Status)
	}
}

// checkJSONOutput checks that out is one JSON document, or with lines
// one a line (JSON Lines).
func checkJSONOutput(t *testing.T, out string, lines bool) {
	t.Helper()
	docs := []string{out}
	if lines {
		docs = strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	}
	for _, d := range docs {
		if !json.Valid([]byte(d)) {
			t.Errorf("not JSON: %q", d)
		}
	}
}

// maskCA replaces the PEM of the test server's certificate, which the
// manifest's ConfigMap carries, with $CA.
func maskCA(s string) string {
	return regexp.MustCompile(`(?m)^(\s*ca\.crt: \|)\n(\s+.*\n)+?(\s+-----END CERTIFICATE-----\n)`).ReplaceAllString(s, "$1\n    $$CA\n")
}
