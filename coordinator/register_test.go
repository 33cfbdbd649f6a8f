package coordinator

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// registerEnv is a mesh with cluster prod and role viewer, alice and sam
// assigned viewer on prod, an agent of prod and a device of alice's, both
// streaming their maps (snapshots read).
type registerEnv struct {
	*testEnv
	admin, alice, sam proto.Session
	joinToken         string
	agentMap, devMap  *mapStream
}

func newRegisterEnv(t *testing.T) *registerEnv {
	t.Helper()
	e := &registerEnv{testEnv: newTestEnv(t)}
	e.admin = e.login("admin@example.com")
	e.alice = e.login("alice@example.com", "dev")
	e.sam = e.login("sam@example.com")
	var cl proto.CreateClusterResponse
	e.must("POST", "/api/v1/clusters", e.admin.Token, proto.CreateClusterRequest{Name: "prod"}, &cl)
	e.joinToken = cl.JoinToken
	e.must("POST", "/api/v1/roles", e.admin.Token, proto.Role{Name: "viewer", Groups: []string{"viewers"}}, nil)
	for _, who := range []string{"alice@example.com", "sam@example.com"} {
		e.must("POST", "/api/v1/assignments", e.admin.Token, proto.Assignment{User: who, Role: "viewer", Cluster: "prod"}, nil)
	}
	var agent, dev proto.RegisterResponse
	e.must("POST", "/api/v1/agents", e.joinToken, proto.RegisterAgentRequest{PublicKey: newKey(t), CSR: newCSR(t)}, &agent)
	e.must("POST", "/api/v1/devices", e.alice.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}, &dev)
	e.agentMap, e.devMap = e.openMap(agent.NodeToken), e.openMap(dev.NodeToken)
	if m := e.agentMap.next(); len(m.Peers) != 1 {
		t.Fatalf("agent snapshot = %+v, want alice's device", m.Peers)
	}
	if m := e.devMap.next(); len(m.Peers) != 1 {
		t.Fatalf("device snapshot = %+v, want the agent", m.Peers)
	}
	return e
}

// slowRequest is a request whose headers have reached the coordinator and
// whose handler is reading its body, which the test finishes later.
type slowRequest struct {
	t     *testing.T
	body  *io.PipeWriter
	final []byte
	resp  chan *http.Response
	errc  chan error
}

// startSlow sends method path with token to h, served by its own test
// server, and returns once the handler has started reading the body: by
// then every check made on the headers alone has passed. finish sends
// body.
func startSlow(t *testing.T, h http.Handler, method, path, token string, body any) *slowRequest {
	t.Helper()
	reading := make(chan struct{})
	var once sync.Once
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = &readSignal{ReadCloser: r.Body, first: func() { once.Do(func() { close(reading) }) }}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	raw, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(method, ts.URL+path, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	sr := &slowRequest{t: t, body: pw, final: raw, resp: make(chan *http.Response, 1), errc: make(chan error, 1)}
	go func() {
		resp, err := ts.Client().Do(req)
		if err != nil {
			sr.errc <- err
			return
		}
		sr.resp <- resp
	}()
	select {
	case <-reading:
	case resp := <-sr.resp:
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("%s %s answered %d before its body was sent: %s", method, path, resp.StatusCode, b)
	case err := <-sr.errc:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatalf("%s %s: the handler did not start reading the body within 10s", method, path)
	}
	return sr
}

// finish sends the body and returns the answer's status and problem.
func (sr *slowRequest) finish() (int, proto.Problem) {
	sr.t.Helper()
	go func() {
		sr.body.Write(sr.final)
		sr.body.Close()
	}()
	select {
	case resp := <-sr.resp:
		defer resp.Body.Close()
		var p proto.Problem
		json.NewDecoder(resp.Body).Decode(&p)
		return resp.StatusCode, p
	case err := <-sr.errc:
		sr.t.Fatal(err)
	case <-time.After(10 * time.Second):
		sr.t.Fatal("no answer within 10s of the body")
	}
	panic("unreachable")
}

// readSignal calls first when its reader is read for the first time.
type readSignal struct {
	io.ReadCloser
	first func()
}

func (r *readSignal) Read(p []byte) (int, error) {
	r.first()
	return r.ReadCloser.Read(p)
}

// storedNodes returns the keys of the nodes in the store and the number
// of reserved overlay addresses.
func (e *registerEnv) storedNodes() (keys map[proto.Key]bool, addrs int) {
	e.t.Helper()
	keys = map[proto.Key]bool{}
	err := e.srv.store.View(func(tx store.Tx) error {
		ns, err := store.List[node](tx, store.Nodes)
		for _, n := range ns {
			keys[n.Key] = true
		}
		if err != nil {
			return err
		}
		return tx.ForEach(store.Addresses, func(string, []byte) error { addrs++; return nil })
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return keys, addrs
}

// TestRegistrationRechecksCredentialAtWrite: a registration whose headers
// carried a valid credential, and whose body arrives after that credential
// was revoked (join token revoked or rotated, cluster deleted, user
// disabled, session logged out), is refused, and leaves nothing behind: no
// node or address in the store or in memory, and no map message naming
// it. The revocation lands at one of the two places where the
// registration does not hold the coordinator's lock: while the handler
// reads the body (between the header checks and the write), or once the
// write is durable and before the node is applied to memory, where the
// revocation does not know the node yet.
func TestRegistrationRechecksCredentialAtWrite(t *testing.T) {
	type target int
	const (
		agentTarget target = iota
		deviceTarget
	)
	for _, tc := range []struct {
		name     string
		target   target
		revoke   func(e *registerEnv)
		wantCode proto.ErrorCode
		wantHTTP int
	}{
		{"agent after revoke-token", agentTarget, func(e *registerEnv) {
			e.must("POST", "/api/v1/clusters/prod/revoke-token", e.admin.Token, nil, nil)
		}, proto.CodeInvalidJoinToken, http.StatusUnauthorized},
		{"agent after rotate-token", agentTarget, func(e *registerEnv) {
			e.must("POST", "/api/v1/clusters/prod/rotate-token", e.admin.Token, nil, nil)
		}, proto.CodeInvalidJoinToken, http.StatusUnauthorized},
		{"agent after cluster delete", agentTarget, func(e *registerEnv) {
			e.must("DELETE", "/api/v1/clusters/prod", e.admin.Token, nil, nil)
		}, proto.CodeInvalidJoinToken, http.StatusUnauthorized},
		{"device after logout", deviceTarget, func(e *registerEnv) {
			e.must("DELETE", "/api/v1/session", e.alice.Token, nil, nil)
		}, proto.CodeSessionExpired, http.StatusUnauthorized},
		{"device after user disable", deviceTarget, func(e *registerEnv) {
			e.must("POST", "/api/v1/users/alice@example.com/disable", e.admin.Token, nil, nil)
		}, proto.CodeSessionExpired, http.StatusUnauthorized},
	} {
		for _, during := range []string{"body", "write"} {
			t.Run(tc.name+" during "+during, func(t *testing.T) {
				testRevokedWhileRegistering(t, tc.target == agentTarget, during == "write", tc.revoke, tc.wantHTTP, tc.wantCode)
			})
		}
	}
}

// testRevokedWhileRegistering registers an agent (or a device of alice's)
// while revoke runs, during its body or its write, and checks it is
// refused and leaves nothing behind.
func testRevokedWhileRegistering(t *testing.T, agent, duringWrite bool, revoke func(e *registerEnv), wantHTTP int, wantCode proto.ErrorCode) {
	t.Helper()
	{
		{
			e := newRegisterEnv(t)
			rogue := newKey(t)
			path, token := "/api/v1/devices", e.alice.Token
			var body any = proto.RegisterDeviceRequest{PublicKey: rogue, Hostname: "rogue"}
			if agent {
				path, token = "/api/v1/agents", e.joinToken
				body = proto.RegisterAgentRequest{PublicKey: rogue, Hostname: "rogue", CSR: newCSR(t)}
			}
			var status int
			var p proto.Problem
			if duringWrite {
				e.srv.testRegisterWritten = sync.OnceFunc(func() { revoke(e) })
				var pp *proto.Problem
				if status, pp = e.call("POST", path, token, body, nil); pp != nil {
					p = *pp
				}
			} else {
				sr := startSlow(t, e.srv.Handler(), "POST", path, token, body)
				revoke(e)
				status, p = sr.finish()
			}
			if status != wantHTTP || p.Code != wantCode {
				t.Errorf("registration straddling the revocation = %d %+v, want %d %s", status, p, wantHTTP, wantCode)
			}

			keys, addrs := e.storedNodes()
			if keys[rogue] {
				t.Error("the refused node is in the store")
			}
			if addrs != 2*len(keys) {
				t.Errorf("%d overlay addresses reserved for %d stored nodes, want 2 each", addrs, len(keys))
			}
			e.srv.mu.Lock()
			inMemory := e.srv.nodesByKey[rogue] != nil
			e.srv.mu.Unlock()
			if inMemory {
				t.Error("the refused node is in the coordinator's state")
			}

			// A map that would have carried the node: the agent's for a
			// device, alice's device's for an agent (both alive after
			// these revocations). A sentinel change that reaches it marks
			// the end; nothing before it may name the refused key.
			watch := e.devMap
			if !agent {
				watch = e.agentMap
				var sam proto.RegisterResponse
				e.must("POST", "/api/v1/devices", e.sam.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t), Hostname: "sentinel"}, &sam)
			} else {
				var cl proto.CreateClusterResponse
				e.must("POST", "/api/v1/clusters", e.admin.Token, proto.CreateClusterRequest{Name: "canary"}, &cl)
				e.must("POST", "/api/v1/assignments", e.admin.Token, proto.Assignment{User: "alice@example.com", Role: "viewer", Cluster: "canary"}, nil)
				sentinel := e.registerAgent(cl.JoinToken, "sentinel")
				// An agent enters its users' maps when its map stream opens.
				e.openMap(sentinel.NodeToken)
			}
			for sentinel := false; !sentinel; {
				m := watch.next()
				for _, p := range m.Peers {
					if p.Key == rogue {
						t.Fatalf("a map carried the refused node: %+v", p)
					}
					sentinel = sentinel || p.Hostname == "sentinel"
				}
			}
		}
	}
}

// TestRegistrationSlowBodyWithValidCredential: the write-time check
// refuses nothing a valid credential may do: a slow body with a credential
// that stays valid registers.
func TestRegistrationSlowBodyWithValidCredential(t *testing.T) {
	e := newRegisterEnv(t)
	for _, tc := range []struct {
		name, path, token string
		body              any
	}{
		{"agent", "/api/v1/agents", e.joinToken, proto.RegisterAgentRequest{PublicKey: newKey(t), CSR: newCSR(t)}},
		{"device", "/api/v1/devices", e.sam.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sr := startSlow(t, e.srv.Handler(), "POST", tc.path, tc.token, tc.body)
			if status, p := sr.finish(); status != http.StatusOK {
				t.Fatalf("slow registration with a valid credential = %d %+v", status, p)
			}
		})
	}
}

// TestSessionWritesRecheckAfterBody: a change made with a session (an
// administrator's, an approver's, a requester's) whose body arrives after
// that session was logged out or its user disabled is refused and changes
// nothing: the session is checked again once the body is in.
func TestSessionWritesRecheckAfterBody(t *testing.T) {
	for _, tc := range []struct {
		name   string
		start  func(e *accessEnv, ar proto.AccessRequest) *slowRequest
		revoke func(e *accessEnv)
	}{
		{"assignment after the admin's logout", func(e *accessEnv, _ proto.AccessRequest) *slowRequest {
			return startSlow(e.t, e.srv.Handler(), "POST", "/api/v1/assignments", e.admin.Token, proto.Assignment{User: "sam@example.com", Role: "viewer", Cluster: "prod"})
		}, func(e *accessEnv) {
			e.must("DELETE", "/api/v1/session", e.admin.Token, nil, nil)
		}},
		{"approval after the approver is disabled", func(e *accessEnv, ar proto.AccessRequest) *slowRequest {
			return startSlow(e.t, e.srv.Handler(), "POST", "/api/v1/access-requests/"+ar.ID+"/approve", e.sam.Token, proto.AccessDecision{Reason: "ok"})
		}, func(e *accessEnv) {
			e.must("POST", "/api/v1/users/sam@example.com/disable", e.admin.Token, nil, nil)
		}},
		{"access request after the requester's logout", func(e *accessEnv, _ proto.AccessRequest) *slowRequest {
			return startSlow(e.t, e.srv.Handler(), "POST", "/api/v1/access-requests", e.sam.Token, proto.CreateAccessRequest{Role: "viewer", Cluster: "prod", Duration: proto.Duration(time.Hour), Reason: "INC-2"})
		}, func(e *accessEnv) {
			e.must("DELETE", "/api/v1/session", e.sam.Token, nil, nil)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newAccessEnv(t)
			ar, status, p := e.request(e.alice.Token, proto.CreateAccessRequest{Role: "viewer", Cluster: "prod", Duration: proto.Duration(time.Hour), Reason: "INC-1"})
			if p != nil {
				t.Fatalf("request = %d %+v", status, p)
			}
			sr := tc.start(e, ar)
			tc.revoke(e)
			if status, p := sr.finish(); status != http.StatusUnauthorized {
				t.Errorf("change straddling the revocation = %d %+v, want 401", status, p)
			}
			e.srv.mu.Lock()
			asgs, reqs, state := len(e.srv.assignments), len(e.srv.requests), e.srv.requests[ar.ID].State
			e.srv.mu.Unlock()
			if asgs != 0 || reqs != 1 || state != proto.RequestPending {
				t.Errorf("after the refusal: %d assignments, %d requests, the first %s; want none, 1, pending", asgs, reqs, state)
			}
		})
	}
}

// TestAuditIngestRechecksAgentAtWrite: an agent's audit batch whose
// headers carried a valid node token, and whose body arrives after the
// agent was removed (its cluster's join token revoked, the cluster
// deleted), is refused with 401 and stores nothing: no event, no spool
// sequence. The same slow batch from an agent that stays registered is
// stored.
func TestAuditIngestRechecksAgentAtWrite(t *testing.T) {
	for _, tc := range []struct {
		name     string
		revoke   func(e *registerEnv)
		wantHTTP int
	}{
		{"no revocation", func(*registerEnv) {}, http.StatusOK},
		{"after revoke-token", func(e *registerEnv) {
			e.must("POST", "/api/v1/clusters/prod/revoke-token", e.admin.Token, nil, nil)
		}, http.StatusUnauthorized},
		{"after cluster delete", func(e *registerEnv) {
			e.must("DELETE", "/api/v1/clusters/prod", e.admin.Token, nil, nil)
		}, http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRegisterEnv(t)
			agent := e.registerAgent(e.joinToken, "slow")
			batch := proto.AuditBatch{Source: "slowspool", Events: []proto.AuditEvent{{
				Code: proto.AuditRequest, Time: time.Now(), Actor: "alice@example.com", SourceSeq: 1,
				Resource: &proto.AuditResource{Verb: "list", Resource: "pods"}, Status: 200,
			}}}
			sr := startSlow(t, e.srv.Handler(), "POST", "/api/v1/audit/events", agent.NodeToken, batch)
			tc.revoke(e)
			st, p := sr.finish()
			if st != tc.wantHTTP {
				t.Fatalf("batch straddling the change = %d %+v, want %d", st, p, tc.wantHTTP)
			}
			if st == http.StatusUnauthorized && p.Code != proto.CodeUnauthenticated {
				t.Errorf("refusal code = %s, want %s", p.Code, proto.CodeUnauthenticated)
			}

			stored, sources := 0, 0
			err := e.srv.store.View(func(tx store.Tx) error {
				evs, err := store.List[proto.AuditEvent](tx, store.Audit)
				for _, ev := range evs {
					if ev.Source == batch.Source {
						stored++
					}
				}
				if err != nil {
					return err
				}
				return tx.ForEach(store.AuditSource, func(string, []byte) error { sources++; return nil })
			})
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			if tc.wantHTTP == http.StatusOK {
				want = 1
			}
			if stored != want || sources != want {
				t.Errorf("stored %d events and %d spool sequences of the batch, want %d", stored, sources, want)
			}
		})
	}
}
