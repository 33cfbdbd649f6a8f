package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// newReplicaEnvs starts n coordinators on one shared in-memory store (a
// handle each, as replicas on one etcd have) and one identity provider,
// all with the first one's public URL, as replicas behind one load
// balancer have.
// With wrap, replica i uses wrap(i, its handle) as its store.
func newReplicaEnvs(t *testing.T, n int, wrap ...func(int, *store.Mem) store.Store) []*testEnv {
	t.Helper()
	return newReplicaEnvsWith(t, n, nil, wrap...)
}

// newReplicaEnvsWith is newReplicaEnvs with configure applied to each
// replica's configuration, when not nil.
func newReplicaEnvsWith(t *testing.T, n int, configure func(*Config), wrap ...func(int, *store.Mem) store.Store) []*testEnv {
	t.Helper()
	m := store.NewMem()
	iss := newFakeIssuer(t)
	stores := []store.Store{m}
	for len(stores) < n {
		stores = append(stores, m.Replica())
	}
	for _, w := range wrap {
		for i := range stores {
			stores[i] = w(i, stores[i].(*store.Mem))
		}
	}
	envs := make([]*testEnv, n)
	for i := range envs {
		envs[i] = &testEnv{t: t, iss: iss, dir: t.TempDir(), st: stores[i]}
		public := ""
		if i > 0 {
			public = envs[0].ts.URL
		}
		envs[i].configure = func(c *Config) {
			if public != "" {
				c.PublicURL = public
			}
			if configure != nil {
				configure(c)
			}
		}
		envs[i].start()
	}
	return envs
}

// stateDigest describes what a Server's state holds, for comparing
// replicas: every record by id with its main fields, and the addresses in
// use.
func stateDigest(s *Server) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	line := func(kind string, m map[string]string) {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			fmt.Fprintf(&b, "%s %s %s\n", kind, k, m[k])
		}
	}
	mapOf := func(f func(add func(k, v string))) map[string]string {
		m := map[string]string{}
		f(func(k, v string) { m[k] = v })
		return m
	}
	line("user", mapOf(func(add func(k, v string)) {
		for id, u := range s.users {
			add(id, fmt.Sprintf("%s %v disabled=%v", u.Login, u.Groups, u.Disabled))
		}
	}))
	line("session", mapOf(func(add func(k, v string)) {
		for h, se := range s.sessions {
			add(h, se.UserID)
		}
	}))
	line("node", mapOf(func(add func(k, v string)) {
		for id, n := range s.nodes {
			add(id, fmt.Sprintf("%s %s %v", n.Kind, n.Key, n.Addresses))
		}
	}))
	line("cluster", mapOf(func(add func(k, v string)) {
		for id, c := range s.clusters {
			add(id, fmt.Sprintf("%s %v %s", c.Name, c.Labels, c.JoinTokenHash))
		}
	}))
	line("role", mapOf(func(add func(k, v string)) {
		for id, r := range s.roles {
			add(id, fmt.Sprintf("%s %v", r.Name, r.Groups))
		}
	}))
	line("assignment", mapOf(func(add func(k, v string)) {
		for id, a := range s.assignments {
			add(id, fmt.Sprintf("%s %s %s %s", a.UserID, a.Group, a.RoleID, a.ClusterID))
		}
	}))
	line("request", mapOf(func(add func(k, v string)) {
		for id, r := range s.requests {
			add(id, r.State)
		}
	}))
	for _, p := range s.ipam.pools {
		fmt.Fprintf(&b, "pool %s used %d\n", p.prefix, p.used)
	}
	return b.String()
}

// waitSameState waits until every replica's state is the first's.
func waitSameState(t *testing.T, envs []*testEnv) {
	t.Helper()
	var last string
	defer func() {
		if t.Failed() {
			t.Log(last)
		}
	}()
	testkit.WaitFor(t, "every replica's state to match the first's", func() bool {
		want := stateDigest(envs[0].srv)
		for _, e := range envs[1:] {
			if got := stateDigest(e.srv); got != want {
				last = fmt.Sprintf("first:\n%s\nother:\n%s", want, got)
				return false
			}
		}
		return true
	})
}

// peers follows a map stream's peers by key, as a node applies them.
type peers struct {
	ms *mapStream
	m  map[proto.Key]proto.Peer
}

func follow(ms *mapStream) *peers { return &peers{ms: ms, m: map[proto.Key]proto.Peer{}} }

// waitFor reads messages until the peers satisfy ok.
func (p *peers) waitFor(what string, ok func(map[proto.Key]proto.Peer) bool) {
	p.ms.t.Helper()
	for !ok(p.m) {
		select {
		case m, open := <-p.ms.msgs:
			if !open {
				p.ms.t.Fatalf("map stream ended waiting for %s", what)
			}
			if m.Snapshot {
				clear(p.m)
			}
			for _, peer := range m.Peers {
				p.m[peer.Key] = peer
			}
			for _, k := range m.Removed {
				delete(p.m, k)
			}
		case <-time.After(5 * time.Second):
			p.ms.t.Fatalf("map stream: no %s within 5s (peers %v)", what, slices.Collect(maps.Keys(p.m)))
		}
	}
}

// waitEnd reads the stream until it ends.
func (ms *mapStream) waitEnd(why string) {
	ms.t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ms.msgs:
			if !ok {
				return
			}
		case <-deadline:
			ms.t.Fatalf("map stream still open 5s %s", why)
		}
	}
}

// waitKeys waits until the peers are exactly keys.
func (p *peers) waitKeys(what string, keys ...proto.Key) {
	p.ms.t.Helper()
	p.waitFor(what, func(m map[proto.Key]proto.Peer) bool {
		return len(m) == len(keys) && !slices.ContainsFunc(keys, func(k proto.Key) bool { _, ok := m[k]; return !ok })
	})
}

// TestReplicasFollowEachOther: two coordinators on one store. Changes made
// on either (logins, clusters, roles, registrations, assignments,
// revocations) reach the other's state and the map streams open on it,
// and the two states end the same.
func TestReplicasFollowEachOther(t *testing.T) {
	envs := newReplicaEnvs(t, 2)
	a, b := envs[0], envs[1]

	// A session made on a is good on b once b followed.
	admin := a.login("admin@example.com")
	testkit.WaitFor(t, "b to know a's session", func() bool {
		st, _ := b.call("GET", "/api/v1/whoami", admin.Token, nil, nil)
		return st == http.StatusOK
	})
	var cl proto.CreateClusterResponse
	b.must("POST", "/api/v1/clusters", admin.Token, proto.CreateClusterRequest{Name: "prod"}, &cl)
	waitSameState(t, envs)
	a.must("POST", "/api/v1/roles", admin.Token, proto.Role{Name: "viewer", Groups: []string{"viewers"}}, nil)

	// The agent registers and streams on a; alice's device on b.
	var agent proto.RegisterResponse
	agentKey := newKey(t)
	a.must("POST", "/api/v1/agents", cl.JoinToken, proto.RegisterAgentRequest{PublicKey: agentKey, Hostname: "node-1", CSR: newCSR(t)}, &agent)
	alice := b.login("alice@example.com", "dev")
	var dev proto.RegisterResponse
	devKey := newKey(t)
	b.must("POST", "/api/v1/devices", alice.Token, proto.RegisterDeviceRequest{PublicKey: devKey, Hostname: "laptop"}, &dev)
	waitSameState(t, envs)
	agentMap := follow(a.openMap(agent.NodeToken))
	devMap := follow(b.openMap(dev.NodeToken))

	// An assignment made on a opens the pair on both replicas' streams.
	var asg proto.Assignment
	a.must("POST", "/api/v1/assignments", admin.Token, proto.Assignment{User: "alice@example.com", Role: "viewer", Cluster: "prod"}, &asg)
	devMap.waitKeys("the agent after the assignment on a", agentKey)
	agentMap.waitKeys("the device after the assignment on a", devKey)

	// A role change on b reaches the agent's map on a.
	b.must("PUT", "/api/v1/roles/viewer", admin.Token, proto.Role{Name: "viewer", Groups: []string{"viewers", "auditors"}}, nil)
	agentMap.waitFor("the device with the role's new groups", func(m map[proto.Key]proto.Peer) bool {
		id := m[devKey].Identity
		return id != nil && len(id.Roles) == 1 && slices.Equal(id.Roles[0].Groups, []string{"auditors", "viewers"})
	})

	// Deleting the assignment on b removes the pair on both.
	b.must("DELETE", "/api/v1/assignments/"+asg.ID, admin.Token, nil, nil)
	agentMap.waitKeys("the device's removal after the deletion on b")
	devMap.waitKeys("the agent's removal after the deletion on b")
	waitSameState(t, envs)

	// Disabling alice on a ends her device's stream on b.
	a.must("POST", "/api/v1/users/alice@example.com/disable", admin.Token, nil, nil)
	devMap.ms.waitEnd("after alice was disabled on a")
	waitSameState(t, envs)
	if d := stateDigest(b.srv); strings.Contains(d, "node dev_") {
		t.Fatalf("b still holds a device after alice was disabled on a:\n%s", d)
	}
}

// TestReplicaResync: a replica that reloads its whole state (after the
// store's history it needed was compacted) ends up with the store's
// state and ends its map streams, whose nodes reconnect for a snapshot.
func TestReplicaResync(t *testing.T) {
	envs := newReplicaEnvs(t, 2)
	a, b := envs[0], envs[1]
	admin := a.login("admin@example.com")
	var cl proto.CreateClusterResponse
	a.must("POST", "/api/v1/clusters", admin.Token, proto.CreateClusterRequest{Name: "prod"}, &cl)
	var agent proto.RegisterResponse
	a.must("POST", "/api/v1/agents", cl.JoinToken, proto.RegisterAgentRequest{PublicKey: newKey(t), Hostname: "node-1", CSR: newCSR(t)}, &agent)
	waitSameState(t, envs)
	ms := b.openMap(agent.NodeToken)
	ms.next()
	want := stateDigest(b.srv)
	if _, err := b.srv.resync(b.st.(store.Feed)); err != nil {
		t.Fatal(err)
	}
	if got := stateDigest(b.srv); got != want {
		t.Fatalf("after resync:\n%s\nwant:\n%s", got, want)
	}
	ms.waitEnd("after the resync")
	b.openMap(agent.NodeToken).next() // and it reconnects
	a.must("POST", "/api/v1/roles", admin.Token, proto.Role{Name: "viewer", Groups: []string{"viewers"}}, nil)
	waitSameState(t, envs)
}

// TestRegistrationRechecksTheStore: a registration reads its credential
// in its own transaction, so a revocation another replica committed and
// this one has not applied yet refuses it. The store is changed behind
// the coordinator's memory here, as such a commit is.
func TestRegistrationRechecksTheStore(t *testing.T) {
	e := newTestEnv(t)
	admin := e.login("admin@example.com")
	alice := e.login("alice@example.com")
	var cl proto.CreateClusterResponse
	e.must("POST", "/api/v1/clusters", admin.Token, proto.CreateClusterRequest{Name: "prod"}, &cl)
	behind := func(fn func(tx store.Tx) error) {
		t.Helper()
		if err := e.srv.store.Update(fn); err != nil {
			t.Fatal(err)
		}
	}
	e.srv.mu.Lock()
	var aliceSession string
	for h, se := range e.srv.sessions {
		if e.srv.users[se.UserID].Login == "alice@example.com" {
			aliceSession = h
		}
	}
	c := *e.srv.clustersByName["prod"]
	e.srv.mu.Unlock()

	tests := []struct {
		name   string
		revoke func(tx store.Tx) error
		token  string
		path   string
		body   any
		status int
		code   proto.ErrorCode
	}{
		{"device after logout elsewhere", func(tx store.Tx) error { return tx.Delete(store.Sessions, aliceSession) },
			alice.Token, "/api/v1/devices", proto.RegisterDeviceRequest{PublicKey: newKey(t), Hostname: "laptop"}, http.StatusUnauthorized, proto.CodeSessionExpired},
		{"agent after token rotation elsewhere", func(tx store.Tx) error {
			nc := c
			nc.JoinTokenHash = hashSecret("cjt_rotated")
			return store.Put(tx, store.Clusters, nc.ID, &nc)
		}, cl.JoinToken, "/api/v1/agents", proto.RegisterAgentRequest{PublicKey: newKey(t), Hostname: "node-1", CSR: newCSR(t)}, http.StatusUnauthorized, proto.CodeInvalidJoinToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			behind(tt.revoke)
			status, p := e.call("POST", tt.path, tt.token, tt.body, nil)
			if status != tt.status || p == nil || p.Code != tt.code {
				t.Fatalf("registration = %d %+v, want %d %s", status, p, tt.status, tt.code)
			}
		})
	}
	var nodes int
	if err := e.srv.store.View(func(tx store.Tx) error {
		return tx.ForEach(store.Nodes, func(string, []byte) error { nodes++; return nil })
	}); err != nil {
		t.Fatal(err)
	}
	if nodes != 0 {
		t.Fatalf("%d nodes stored by refused registrations", nodes)
	}
}

// leaderOf waits until exactly one of envs leads and returns it.
func leaderOf(t *testing.T, envs []*testEnv) *testEnv {
	t.Helper()
	var leader *testEnv
	testkit.WaitFor(t, "exactly one replica to lead", func() bool {
		leader = nil
		n := 0
		for _, e := range envs {
			if e.ts != nil && e.srv.leader.Load() {
				leader = e
				n++
			}
		}
		return n == 1
	})
	return leader
}

// TestReplicasElectOneLeader: of two replicas one runs the singleton
// work: an expired assignment is expired, and recorded, once; when the
// leader stops, the other takes over.
func TestReplicasElectOneLeader(t *testing.T) {
	envs := newReplicaEnvs(t, 2)
	leader := leaderOf(t, envs)
	a := envs[0]
	admin := a.login("admin@example.com")
	a.login("alice@example.com")
	a.must("POST", "/api/v1/clusters", admin.Token, proto.CreateClusterRequest{Name: "prod"}, nil)
	a.must("POST", "/api/v1/roles", admin.Token, proto.Role{Name: "viewer", Groups: []string{"viewers"}}, nil)
	exp := time.Now().Add(time.Second)
	var asg proto.Assignment
	a.must("POST", "/api/v1/assignments", admin.Token, proto.Assignment{User: "alice@example.com", Role: "viewer", Cluster: "prod", Expires: &exp}, &asg)
	testkit.WaitFor(t, "the assignment to expire on both replicas", func() bool {
		for _, e := range envs {
			e.srv.mu.Lock()
			_, ok := e.srv.assignments[asg.ID]
			e.srv.mu.Unlock()
			if ok {
				return false
			}
		}
		return true
	})
	expired := 0
	err := a.srv.store.View(func(tx store.Tx) error {
		return tx.ForEach(store.Audit, func(_ string, raw []byte) error {
			var ev proto.AuditEvent
			if err := json.Unmarshal(raw, &ev); err != nil {
				return err
			}
			if ev.Object == asg.ID && ev.Code == changeCodes["assignment.expired"] {
				expired++
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if expired != 1 {
		t.Fatalf("the assignment's expiry was recorded %d times, want once", expired)
	}
	leader.stop()
	var rest []*testEnv
	for _, e := range envs {
		if e != leader {
			rest = append(rest, e)
		}
	}
	leaderOf(t, rest)
}

// TestReplicaKeepsItsAgents: an agent streaming from a replica that does
// not lead is not reclaimed by the one that does after AgentTTL: the
// replica it streams from keeps its last-seen time fresh in the store.
func TestReplicaKeepsItsAgents(t *testing.T) {
	const ttl = 2 * time.Second
	m := store.NewMem()
	iss := newFakeIssuer(t)
	stores := []*store.Mem{m, m.Replica()}
	envs := make([]*testEnv, 2)
	for i := range envs {
		envs[i] = &testEnv{t: t, iss: iss, dir: t.TempDir(), st: stores[i]}
		public := ""
		if i > 0 {
			public = envs[0].ts.URL
		}
		envs[i].configure = func(c *Config) {
			c.AgentTTL = ttl
			if public != "" {
				c.PublicURL = public
			}
		}
		envs[i].start()
	}
	leader := leaderOf(t, envs)
	other := envs[0]
	if other == leader {
		other = envs[1]
	}
	admin := other.login("admin@example.com")
	var cl proto.CreateClusterResponse
	other.must("POST", "/api/v1/clusters", admin.Token, proto.CreateClusterRequest{Name: "prod"}, &cl)
	var agent proto.RegisterResponse
	other.must("POST", "/api/v1/agents", cl.JoinToken, proto.RegisterAgentRequest{PublicKey: newKey(t), Hostname: "node-1", CSR: newCSR(t)}, &agent)
	ms := other.openMap(agent.NodeToken)
	ms.next()
	start := time.Now()
	testkit.WaitForWithin(t, 5*ttl, "the leader to see the agent seen more than AgentTTL after it connected", func() bool {
		leader.srv.mu.Lock()
		defer leader.srv.mu.Unlock()
		n := leader.srv.nodes[agent.NodeID]
		return n != nil && n.LastSeen.After(start.Add(ttl))
	})
	for _, e := range envs {
		e.srv.mu.Lock()
		n := e.srv.nodes[agent.NodeID]
		e.srv.mu.Unlock()
		if n == nil {
			t.Fatal("the agent streaming from the other replica was reclaimed")
		}
	}
}

// waitLogins waits until every replica's login table holds n logins
// and, if field is set, n of them have it.
func waitLogins(t *testing.T, envs []*testEnv, what string, count func(*loginTable) int, n int) {
	t.Helper()
	testkit.WaitFor(t, what, func() bool {
		for _, e := range envs {
			e.srv.logins.mu.Lock()
			got := count(e.srv.logins)
			e.srv.logins.mu.Unlock()
			if got != n {
				return false
			}
		}
		return true
	})
}

// TestLoginAcrossReplicas: each step of a login may reach another
// replica. A loopback login started on b comes back from the identity
// provider to a (the public URL), and its code is exchanged on a and c at
// once: exactly one gets the session. A headless login started on c is
// confirmed on b and polled on a.
func TestLoginAcrossReplicas(t *testing.T) {
	envs := newReplicaEnvs(t, 3)
	a, b, c := envs[0], envs[1], envs[2]
	handles := func(t *loginTable) int { return len(t.byHandle) }

	cli := b.startLogin("http://127.0.0.1:1/cb")
	waitLogins(t, envs, "every replica to know the login started on b", handles, 1)
	a.iss.signIn("alice@example.com")
	status, _, loc := visit(t, newBrowser(t), cli.AuthURL)
	if status != http.StatusSeeOther || loc == nil || loc.Query().Get("code") == "" {
		t.Fatalf("callback on a answered %d to %v, want 303 to the loopback URI with a code", status, loc)
	}
	code := loc.Query().Get("code")
	waitLogins(t, envs, "every replica to know the login's code", func(t *loginTable) int { return len(t.byCode) }, 1)
	type result struct {
		status int
		sess   proto.Session
	}
	results := make(chan result, 2)
	for _, e := range []*testEnv{a, c} {
		go func() {
			var r result
			// call fails the test only on a transport error.
			r.status, _ = e.call("POST", "/api/v1/login/exchange", "", proto.LoginExchangeRequest{Code: code, CodeVerifier: cli.verifier}, &r.sess)
			results <- r
		}()
	}
	var won []proto.Session
	for range 2 {
		r := testkit.Recv(t, results, "an exchange's answer")
		switch r.status {
		case http.StatusOK:
			won = append(won, r.sess)
		case http.StatusGone:
		default:
			t.Errorf("exchange answered %d, want 200 or 410", r.status)
		}
	}
	if len(won) != 1 || won[0].User.Login != "alice@example.com" {
		t.Fatalf("%d exchanges of one code on two replicas got a session (%+v), want exactly one", len(won), won)
	}
	var who proto.Whoami
	testkit.WaitFor(t, "b to know the session issued on a or c", func() bool {
		st, _ := b.call("GET", "/api/v1/whoami", won[0].Token, nil, &who)
		return st == http.StatusOK
	})
	waitLogins(t, envs, "every replica to forget the finished login", handles, 0)

	head := c.startLogin("")
	waitLogins(t, envs, "every replica to know the login started on c", handles, 1)
	a.iss.signIn("bob@example.com")
	browser := newBrowser(t)
	status, page, _ := visit(t, browser, head.AuthURL)
	if status != http.StatusOK || !strings.Contains(page, "Confirm this login") {
		t.Fatalf("callback on a = %d:\n%s", status, page)
	}
	waitLogins(t, envs, "every replica to know the confirmation page", func(t *loginTable) int { return len(t.byConfirm) }, 1)
	// The form comes from the public URL (a's), whichever replica takes it.
	if status, body := b.confirmForm(browser, page, head.UserCode, "confirm", map[string]string{"Origin": a.ts.URL}); status != http.StatusOK || !strings.Contains(body, "Signed in as bob@example.com") {
		t.Fatalf("confirm on b = %d %s", status, body)
	}
	var sess proto.Session
	testkit.WaitFor(t, "a's poll to yield the session confirmed on b", func() bool {
		st, p, s := a.pollLogin(head.Handle, head.verifier)
		if st != http.StatusOK && st != http.StatusAccepted {
			t.Fatalf("poll on a = %d %+v", st, p)
		}
		sess = s
		return st == http.StatusOK
	})
	if sess.User.Login != "bob@example.com" {
		t.Fatalf("session = %+v", sess)
	}
	if st, _, _ := c.pollLogin(head.Handle, head.verifier); st != http.StatusGone && st != http.StatusAccepted {
		t.Fatalf("second poll on c = %d, want 410 (or 202 until c follows)", st)
	}
}

// lagFeed is a replica's store handle whose Watch delivers nothing while
// held: a replica that has not yet applied what the others committed.
type lagFeed struct {
	*store.Mem
	mu   sync.Mutex
	held chan struct{} // non-nil while held; closed by release
}

func (l *lagFeed) hold() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.held = make(chan struct{})
}

func (l *lagFeed) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	close(l.held)
	l.held = nil
}

func (l *lagFeed) Watch(ctx context.Context, after int64, fn func(store.Commit) error) error {
	return l.Mem.Watch(ctx, after, func(c store.Commit) error {
		l.mu.Lock()
		h := l.held
		l.mu.Unlock()
		if h != nil {
			select {
			case <-h:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return fn(c)
	})
}

// TestCredentialsFromAnotherReplicaAtOnce: behind a load balancer the
// request after a login, a registration or a cluster's creation may reach
// a replica that has not applied it yet. That replica waits for its view
// to catch up with the store (awaitReplicated) instead of refusing the
// new session, node token or join token; a credential the store does not
// hold is still refused.
func TestCredentialsFromAnotherReplicaAtOnce(t *testing.T) {
	var lag *lagFeed
	envs := newReplicaEnvs(t, 2, func(i int, m *store.Mem) store.Store {
		if i == 0 {
			return m
		}
		lag = &lagFeed{Mem: m}
		return lag
	})
	a, b := envs[0], envs[1]
	admin := a.login("admin@example.com")
	waitSameState(t, envs)

	// behind runs make on a while b applies nothing, then calls check on
	// b, releasing b's feed a moment after the call began.
	behind := func(what string, make func() string, check func(cred string) (int, *proto.Problem)) {
		t.Helper()
		lag.hold()
		cred := make()
		release := time.AfterFunc(50*time.Millisecond, lag.release)
		st, p := check(cred)
		if release.Stop() { // not released yet
			lag.release()
		}
		if st >= 300 {
			t.Errorf("%s on the replica behind: %d %+v, want it to wait for the store and succeed", what, st, p)
		}
		waitSameState(t, envs)
	}
	behind("a session made on a", func() string {
		return a.login("alice@example.com").Token
	}, func(tok string) (int, *proto.Problem) {
		return b.call("GET", "/api/v1/whoami", tok, nil, nil)
	})
	var joinToken string
	behind("a cluster's join token made on a", func() string {
		joinToken = a.createCluster(admin.Token, "prod").JoinToken
		return joinToken
	}, func(tok string) (int, *proto.Problem) {
		return b.call("POST", "/api/v1/agents", tok, proto.RegisterAgentRequest{PublicKey: newKey(t), Hostname: "node-1", CSR: newCSR(t)}, nil)
	})
	behind("a node token made on a", func() string {
		return a.registerAgent(joinToken, "node-2").NodeToken
	}, func(tok string) (int, *proto.Problem) {
		return b.call("PUT", "/api/v1/nodes/self/endpoints", tok, proto.EndpointsUpdate{}, nil)
	})

	// What the store does not hold is refused, once b has caught up.
	for _, tt := range []struct{ what, method, path, tok string }{
		{"a forged node token", "PUT", "/api/v1/nodes/self/endpoints", "cnt_forged"},
		{"a forged join token", "POST", "/api/v1/agents", "cjt_forged"},
	} {
		if st, _ := b.call(tt.method, tt.path, tt.tok, proto.EndpointsUpdate{}, nil); st != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", tt.what, st)
		}
	}
}
