package cli

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
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
	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/coordinatortest"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// TestGoldenAudit runs the audit commands against a real coordinator
// in-process, a fresh one for each, whose log setupAudit fills, and
// compares their output with testdata/<name>.<format>.golden, or, for the
// commands that print one success line and have no -o, with
// testdata/<name>.golden (go test ./cli -run TestGoldenAudit -update
// rewrites them). The JSON goldens are the commands' stable contract.
// The coordinator signs its checkpoints with goldenCheckpointKey.
func TestGoldenAudit(t *testing.T) {
	// In the environment's config directory, which args name as $CONFIG.
	ckFile, editedFile := filepath.Join("$CONFIG", "checkpoint.json"), filepath.Join("$CONFIG", "edited.json")
	tests := []goldenCase{
		{name: "audit", args: []string{"audit"}, jsonLines: true, sent: []string{"GET /api/v1/audit/events ?limit=50"}},
		{name: "audit-denials", args: []string{"audit", "--category", "denial,access", "--severity", "W", "--limit", "10"}, jsonLines: true,
			sent: []string{"GET /api/v1/audit/events ?category=denial%2Caccess&limit=10&severity=W"}},
		{name: "audit-since", args: []string{"audit", "--since", "2h", "--user", "bob@example.com"}, jsonLines: true,
			sent: []string{"GET /api/v1/audit/events ?from=2030-01-02T08%3A00%3A00Z&limit=50&user=bob%40example.com"}},
		{name: "audit-correlation", args: []string{"audit", "--correlation", "c0ffee00c0ffee00"}, jsonLines: true,
			sent: []string{"GET /api/v1/audit/events ?correlation=c0ffee00c0ffee00&limit=50"}},
		{name: "audit-correlation-malformed", args: []string{"audit", "--correlation", "c0ffee 00"}, plain: true, code: exitUsage},
		{name: "audit-verify", args: []string{"audit", "verify"}, sent: []string{"GET /api/v1/audit/verify"}},
		{name: "audit-verify-broken", args: []string{"audit", "verify"}, brokenAt: 5, code: exitError},
		{name: "audit-verify-checkpoint", args: []string{"audit", "verify", "--checkpoint", ckFile},
			sent: []string{`POST /api/v1/audit/verify {"checkpoint":{"seq":9,`}},
		{name: "audit-verify-edited-checkpoint", args: []string{"audit", "verify", "--checkpoint", editedFile}, plain: true, code: exitError},
		// The export's own record names the client's address and port,
		// which change from run to run, and the checkpoint covers it.
		{name: "audit-checkpoint", args: []string{"audit", "checkpoint"}, plain: true, sent: []string{"POST /api/v1/audit/checkpoints"}},
		{name: "audit-checkpoint-file", args: []string{"audit", "checkpoint", "--file", filepath.Join("$CONFIG", "exported.json")}, plain: true},
	}
	runGolden(t, tests, func(t *testing.T, tt goldenCase) *testEnv {
		e := newRealEnv(t, func(c *coordinator.Config) {
			c.Admins = append(c.Admins, "alice@example.com")
			// Only the checkpoints setupAudit and the commands sign.
			c.AuditCheckpointInterval = 24 * time.Hour
			c.NewID = coordinatortest.IDs(usrAlice, usrBob, clsProd, rolAdmin, reqDenied, "agt_0011223344556677889a")
			der, err := x509.MarshalPKCS8PrivateKey(goldenCheckpointKey)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(c.DataDir, coordinator.AuditKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
				t.Fatal(err)
			}
		})
		ck := setupAudit(e)
		for file, seq := range map[string]uint64{e.expand(ckFile): ck.Seq, e.expand(editedFile): ck.Seq - 1} {
			edited := ck
			edited.Seq = seq
			b, err := json.Marshal(edited)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if tt.brokenAt != 0 {
			editAuditRecord(t, e.real.Store(), tt.brokenAt)
		}
		return e
	})
}

// goldenCheckpointKey signs the audit checkpoints of the goldens' real
// coordinators (Ed25519 signatures are deterministic, so the goldens are
// stable).
var goldenCheckpointKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

// setupAudit fills the audit log of e's real coordinator, each event at
// its time: alice@example.com (an administrator) and bob@example.com log
// in, alice creates the cluster prod and the role admin, denies bob's
// request for it, the agent prod-node-a registers and sends a request of
// alice's and a denial of bob's; then the coordinator signs a checkpoint,
// which it returns, four minutes before fixedNow. e's session is
// alice's.
func setupAudit(e *testEnv) proto.AuditCheckpoint {
	e.t.Helper()
	c, v := e.real, proto.APIVersion
	e.setRealNow(-2 * time.Hour)
	alice := c.LoginClaims(map[string]any{"email": "alice@example.com", "groups": []string{"dev", "sre"}})
	e.useSession(alice)
	e.setRealNow(-110 * time.Minute)
	bob := c.Login("bob@example.com", "dev")
	e.setRealNow(-100 * time.Minute)
	var cl proto.CreateClusterResponse
	c.Do(alice.Token, http.MethodPost, v+"/clusters", proto.CreateClusterRequest{Name: "prod"}, &cl)
	e.setRealNow(-95 * time.Minute)
	c.Do(alice.Token, http.MethodPost, v+"/roles", proto.Role{Name: "admin", Groups: []string{"system:masters"}, ApproverGroups: []string{"sre"}}, nil)
	e.setRealNow(-91 * time.Minute)
	var ar proto.AccessRequest
	c.Do(bob.Token, http.MethodPost, v+"/access-requests", proto.CreateAccessRequest{Role: "admin", Cluster: "prod", Duration: proto.Duration(8 * time.Hour), Reason: "curious"}, &ar)
	e.setRealNow(-90 * time.Minute)
	c.Do(alice.Token, http.MethodPost, v+"/access-requests/"+ar.ID+"/deny", proto.AccessDecision{Reason: "use staging"}, nil)
	e.setRealNow(-time.Hour)
	// With a fixed key, which the registration's event names.
	csr, _ := testkit.CSR(e.t, "prod-node-a")
	var agent proto.RegisterResponse
	c.Do(cl.JoinToken, http.MethodPost, v+"/agents", proto.RegisterAgentRequest{PublicKey: adminKey(9), Hostname: "prod-node-a", CSR: csr}, &agent)
	e.setRealNow(-20 * time.Minute)
	c.Do(agent.NodeToken, http.MethodPost, v+"/audit/events", proto.AuditBatch{Source: "spool-prod-node-a", Events: []proto.AuditEvent{
		{Code: proto.AuditRequest, Time: at(-30 * time.Minute), Actor: "alice@example.com", SourceSeq: 77,
			Resource: &proto.AuditResource{Verb: "list", Resource: "pods", Namespace: "default", Path: "/api/v1/namespaces/default/pods"},
			Outcome:  proto.OutcomeSuccess, Status: 200, Bytes: 4817, Latency: proto.Duration(12345 * time.Microsecond), Correlation: "c0ffee00c0ffee00",
			TraceID: "4bf92f3577b34da6a3ce929d0e0e4736"},
		{Code: proto.AuditProxyDenied, Time: at(-20 * time.Minute), Actor: "bob@example.com", SourceSeq: 78,
			Resource: &proto.AuditResource{Verb: "delete", APIGroup: "apps", Resource: "deployments", Namespace: "payments", Name: "api", Path: "/apis/apps/v1/namespaces/payments/deployments/api"},
			Outcome:  proto.OutcomeDenied, Status: 403, Error: proto.CodeOutsideTimeWindow},
	}}, nil)
	var ck proto.AuditCheckpoint
	err := c.Store().Update(func(tx store.Tx) (err error) {
		ck, err = auditlog.SignCheckpoint(tx, goldenCheckpointKey, at(-4*time.Minute))
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.setRealNow(0)
	return ck
}

// editAuditRecord changes the actor of record seq in st, as someone who
// can write the coordinator's store could, without rehashing it.
func editAuditRecord(t *testing.T, st store.Store, seq uint64) {
	t.Helper()
	err := st.Update(func(tx store.Tx) error {
		var ev proto.AuditEvent
		if err := store.Get(tx, store.Audit, auditlog.Key(seq), &ev); err != nil {
			return err
		}
		ev.Actor = "someone-else@example.com"
		return store.Put(tx, store.Audit, auditlog.Key(seq), ev)
	})
	if err != nil {
		t.Fatal(err)
	}
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
	runGolden(t, tests, func(t *testing.T, _ goldenCase) *testEnv {
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
		return e
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
	runGolden(t, tests, func(t *testing.T, _ goldenCase) *testEnv {
		e := newRealEnv(t, func(c *coordinator.Config) {
			c.Admins = append(c.Admins, "alice@example.com")
			c.NewID = coordinatortest.IDs(usrAlice, usrBob, usrCarol)
		})
		e.useSession(setupUsers(e))
		return e
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
	runGolden(t, tests, func(t *testing.T, _ goldenCase) *testEnv {
		e := newRealEnv(t, func(c *coordinator.Config) {
			c.Admins = append(c.Admins, "alice@example.com")
			c.PendingRequestTTL = time.Hour
			// In the order setupAccess makes them.
			c.NewID = coordinatortest.IDs(reqDenied, reqActive, reqPending, reqNew)
		})
		e.useSession(setupAccess(e))
		return e
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
	runGolden(t, tests, func(t *testing.T, tt goldenCase) *testEnv {
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
		return e
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
	runGolden(t, tests, func(t *testing.T, tt goldenCase) *testEnv {
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
		return e
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

// TestGoldenDevices runs the devices commands against a real
// coordinator in-process, a fresh one for each, that holds the devices of
// goldenDevices, registered when they were created and connected, and
// alice@example.com as its administrator.
func TestGoldenDevices(t *testing.T) {
	tests := []goldenCase{
		{name: "devices-list", args: []string{"devices", "list"}},
		{name: "devices-list-user", args: []string{"devices", "list", "--user", "bob@example.com"}, sent: []string{"GET /api/v1/devices ?user=bob%40example.com"}},
		{name: "devices-revoke", args: []string{"devices", "revoke", devBob}, plain: true, sent: []string{"DELETE /api/v1/devices/" + devBob}},
		{name: "devices-revoke-hostname", args: []string{"devices", "revoke", "alice-laptop"}, plain: true, sent: []string{"DELETE /api/v1/devices/" + devLaptop}},
	}
	// The devices oldest first, in the order they register, with their
	// ids and addresses.
	devs := goldenDevices()
	slices.SortFunc(devs, func(a, b proto.Device) int { return a.Created.Compare(b.Created) })
	var ids []string
	var offs []uint64
	for _, d := range devs {
		ids = append(ids, d.ID)
		offs = append(offs, uint64(d.Addresses[0].Addr().As4()[3]))
	}
	runGolden(t, tests, func(t *testing.T, _ goldenCase) *testEnv {
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
		return e
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
// testdata/<name>[.<format>].golden, and the requests its coordinator
// received after env returned with the case's sent.
func runGolden(t *testing.T, tests []goldenCase, env func(*testing.T, goldenCase) *testEnv) {
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
				e := env(t, tt)
				e.real.Requests()
				args := slices.Clone(args)
				for i := range args {
					args[i] = e.expand(args[i])
				}
				code, out, errb := e.run(args...)
				if code != tt.code {
					t.Fatalf("exit %d, want %d; stderr:\n%s", code, tt.code, errb)
				}
				if strings.Contains(out+errb, "\033[") {
					t.Errorf("colour escapes in output that is not a terminal:\n%q", out+errb)
				}
				sent := strings.Join(e.real.Requests(), "\n")
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
				got = maskCA(e.mask(got))
				golden(t, name, got)
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
