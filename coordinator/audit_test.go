package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/coordinator/store/storetest"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// emptyBucket deletes every key of b in tx.
func emptyBucket(tx store.Tx, b store.Bucket) error {
	var keys []string
	err := tx.ForEach(b, func(k string, _ []byte) error {
		keys = append(keys, k)
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := tx.Delete(b, k); err != nil {
			return err
		}
	}
	return nil
}

func mustVerify(t *testing.T, st store.Store) proto.AuditVerification {
	t.Helper()
	v, err := auditlog.Verify(st, auditlog.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// cutAudit does what someone who can write the store can: it cuts the
// audit log back to record seq and removes every checkpoint, so that the
// store alone still verifies.
func cutAudit(t *testing.T, st store.Store, seq uint64) {
	t.Helper()
	err := st.Update(func(tx store.Tx) error {
		head, err := auditlog.Head(tx)
		if err != nil {
			return err
		}
		for s := seq + 1; s <= head.Seq; s++ {
			if err := tx.Delete(store.Audit, auditlog.Key(s)); err != nil {
				return err
			}
		}
		if err := emptyBucket(tx, store.AuditCheckpoints); err != nil {
			return err
		}
		var e proto.AuditEvent
		if err := store.Get(tx, store.Audit, auditlog.Key(seq), &e); err != nil {
			return err
		}
		return store.Put(tx, store.Meta, auditlog.MetaHead, auditlog.Mark{Seq: seq, Hash: e.Hash})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestAuditIngestIsIdempotent(t *testing.T) {
	e := newAccessEnv(t)
	agent := e.registerAgent(e.joinToken, "")
	ev := func(seq uint64) proto.AuditEvent {
		return proto.AuditEvent{Code: proto.AuditRequest, Time: time.Now(), Actor: "alice@example.com", SourceSeq: seq, Cluster: "forged",
			Resource: &proto.AuditResource{Verb: "list", Resource: "pods"}, Status: 200}
	}
	send := func(b proto.AuditBatch) proto.AuditAck {
		t.Helper()
		var ack proto.AuditAck
		e.must("POST", "/api/v1/audit/events", agent.NodeToken, b, &ack)
		return ack
	}
	if ack := send(proto.AuditBatch{Source: "spool1", Events: []proto.AuditEvent{ev(1), ev(2), ev(3)}}); ack.Acked != 3 || ack.Stored != 3 {
		t.Fatalf("first batch ack = %+v", ack)
	}
	// A resend overlapping the stored events stores only the new one.
	if ack := send(proto.AuditBatch{Source: "spool1", Events: []proto.AuditEvent{ev(2), ev(3), ev(4)}}); ack.Acked != 4 || ack.Stored != 1 || ack.Duplicates != 2 {
		t.Fatalf("resend ack = %+v", ack)
	}
	// Another spool of the same agent counts on its own.
	if ack := send(proto.AuditBatch{Source: "spool2", Events: []proto.AuditEvent{ev(1)}}); ack.Acked != 1 || ack.Stored != 1 {
		t.Fatalf("second source ack = %+v", ack)
	}
	// Agents may not send administrative events, nor users.
	bad := ev(5)
	bad.Code = proto.AuditRoleCreated
	if status, _ := e.call("POST", "/api/v1/audit/events", agent.NodeToken, proto.AuditBatch{Source: "spool1", Events: []proto.AuditEvent{bad}}, nil); status != 400 {
		t.Fatalf("admin code from an agent = %d, want 400", status)
	}
	if status, _ := e.call("POST", "/api/v1/audit/events", e.admin.Token, proto.AuditBatch{Source: "x", Events: []proto.AuditEvent{ev(1)}}, nil); status != 401 {
		t.Fatalf("batch with a session token = %d, want 401", status)
	}

	var page proto.AuditPage
	e.must("GET", "/api/v1/audit/events?category=request&order=asc", e.admin.Token, nil, &page)
	if len(page.Events) != 5 {
		t.Fatalf("stored request events = %d, want 5: %+v", len(page.Events), page.Events)
	}
	for _, ev := range page.Events {
		if ev.Cluster != "prod" || ev.Metadata["agent"] != agent.NodeID || ev.Hash == "" {
			t.Fatalf("stored event %+v: cluster must be the agent's, with its node id", ev)
		}
	}
	var v proto.AuditVerification
	e.must("GET", "/api/v1/audit/verify", e.admin.Token, nil, &v)
	if !v.OK {
		t.Fatalf("verify = %+v", v)
	}
}

func TestAuditCoversChangesAndFailures(t *testing.T) {
	e := newAccessEnv(t)
	// A refused ID token, a refused join token, a non-admin calling the
	// admin API.
	e.call("POST", "/api/v1/login/token", "", proto.TokenExchangeRequest{IDToken: "garbage"}, nil)
	e.call("POST", "/api/v1/agents", "cjt_wrong", proto.RegisterAgentRequest{PublicKey: newKey(t), CSR: newCSR(t)}, nil)
	e.call("GET", "/api/v1/roles", e.alice.Token, nil, nil)
	e.must("DELETE", "/api/v1/session", e.alice.Token, nil, nil)

	want := map[proto.AuditCode]bool{
		proto.AuditLoginToken: false, proto.AuditClusterCreated: false, proto.AuditRoleCreated: false,
		proto.AuditAgentRegistered: false, proto.AuditAgentConnected: false, proto.AuditIDTokenRefused: false,
		proto.AuditAgentRefused: false, proto.AuditAPIDenied: false, proto.AuditSessionRevoked: false,
	}
	// Events without a change of state are written a moment later.
	testkit.WaitFor(t, fmt.Sprintf("audit events %v", slices.Sorted(maps.Keys(want))), func() bool {
		var page proto.AuditPage
		e.must("GET", "/api/v1/audit/events?limit=1000", e.admin.Token, nil, &page)
		for _, ev := range page.Events {
			if _, ok := want[ev.Code]; ok {
				want[ev.Code] = true
			}
			if ev.Code == proto.AuditAgentConnected && ev.Cluster != "prod" {
				t.Errorf("agent connected event without its cluster: %+v", ev)
			}
		}
		return !slices.Contains(slices.Collect(maps.Values(want)), false)
	})
	// Users see only their own events.
	bob := e.login("bob@example.com")
	var own proto.AuditPage
	e.must("GET", "/api/v1/audit/events", bob.Token, nil, &own)
	for _, ev := range own.Events {
		if ev.Actor != "bob@example.com" {
			t.Fatalf("bob sees %+v", ev)
		}
	}
	if status, _ := e.call("GET", "/api/v1/audit/events?user=admin@example.com", bob.Token, nil, nil); status != 403 {
		t.Fatalf("bob asking for the admin's events = %d, want 403", status)
	}
	if status, _ := e.call("GET", "/api/v1/audit/verify", bob.Token, nil, nil); status != 403 {
		t.Fatalf("bob verifying = %d, want 403", status)
	}
	if v := mustVerify(t, e.srv.store); !v.OK {
		t.Fatalf("verify = %+v", v)
	}
}

func TestAuditQueueFlushedOnClose(t *testing.T) {
	e := newTestEnv(t)
	for i := range 50 {
		e.srv.audit(proto.AuditEvent{Code: proto.AuditAgentRefused, Actor: fmt.Sprint("a", i), Outcome: proto.OutcomeFailure})
	}
	e.stop()
	st, err := store.OpenBolt(filepath.Join(e.dir, "coordinator.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	p, err := auditlog.Query(st, &auditlog.Filter{Codes: map[proto.AuditCode]bool{proto.AuditAgentRefused: true}}, "", true, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Events) != 50 || p.Events[49].Actor != "a49" {
		t.Fatalf("after Close, %d queued events stored", len(p.Events))
	}
	if v := mustVerify(t, st); !v.OK {
		t.Fatalf("verify = %+v", v)
	}
}

func TestWriteAuditError(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantStatus int
		wantCode   proto.ErrorCode
		wantTitle  string
		wantHint   string
	}{
		{"bad", errBadBatch{"invalid cursor"}, http.StatusBadRequest, proto.CodeBadRequest, "invalid cursor", "bad hint"},
		{"wrapped bad", fmt.Errorf("view: %w", errBadBatch{"an event has no source_seq"}), http.StatusBadRequest, proto.CodeBadRequest, "an event has no source_seq", "bad hint"},
		{"internal", errors.New("disk full"), http.StatusInternalServerError, proto.CodeInternal, "read audit log: internal error", "retry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			s := &Server{log: slog.New(slog.DiscardHandler)}
			s.writeAuditError(w, tt.err, "bad hint", "read audit log", "retry")
			var p proto.Problem
			if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
				t.Fatalf("decode problem: %v", err)
			}
			if w.Code != tt.wantStatus || p.Code != tt.wantCode || p.Title != tt.wantTitle || p.Hint != tt.wantHint {
				t.Errorf("got %d %s %q %q, want %d %s %q %q", w.Code, p.Code, p.Title, p.Hint, tt.wantStatus, tt.wantCode, tt.wantTitle, tt.wantHint)
			}
		})
	}
}

// TestAuditQueueFullCountsTheLoss: when the audit queue is full, the
// events that do not fit are counted and the count is stored in AL002E
// events; nothing disappears without a trace.
func TestAuditQueueFullCountsTheLoss(t *testing.T) {
	e := newTestEnv(t)
	const limit = 1000
	e.srv.auditq.mu.Lock()
	e.srv.auditq.limit = limit
	e.srv.auditq.mu.Unlock()
	// Hold the store's write lock so the writer cannot drain the queue.
	held, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- e.srv.store.Update(func(store.Tx) error { close(held); <-release; return nil })
	}()
	<-held
	const total = 3 * limit
	for range total {
		e.srv.audit(proto.AuditEvent{Code: proto.AuditDeviceConnected, Actor: "flood"})
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.srv.flushAudit()
	var stored, lost, lossEvents int
	err := e.srv.store.View(func(tx store.Tx) error {
		return tx.ForEach(store.Audit, func(_ string, raw []byte) error {
			var ev proto.AuditEvent
			if err := json.Unmarshal(raw, &ev); err != nil {
				return err
			}
			switch {
			case ev.Code == proto.AuditDeviceConnected && ev.Actor == "flood":
				stored++
			case ev.Code == proto.AuditEventsLost:
				lossEvents++
				var n int
				fmt.Sscan(ev.Metadata["lost"], &n)
				lost += n
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	// The writer may take a batch while events are already being lost,
	// so the loss can be told in more than one event; never in none.
	if lossEvents == 0 || lost < limit || stored+lost != total {
		t.Fatalf("stored %d, lost %d in %d loss events; want every one of %d stored or counted as lost", stored, lost, lossEvents, total)
	}
}

// TestAuditIngestTraceID: an agent's event keeps its trace id, an event
// without one (an agent from before trace ids) is stored as before, the
// chain verifies with both, and search finds an event by its trace id.
func TestAuditIngestTraceID(t *testing.T) {
	e := newAccessEnv(t)
	var agent proto.RegisterResponse
	e.must("POST", "/api/v1/agents", e.joinToken, proto.RegisterAgentRequest{PublicKey: newKey(t), CSR: newCSR(t)}, &agent)
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	evs := []proto.AuditEvent{
		{Code: proto.AuditRequest, Time: time.Now(), Actor: "alice@example.com", SourceSeq: 1, Status: 200, Correlation: "c-1"},
		{Code: proto.AuditRequest, Time: time.Now(), Actor: "alice@example.com", SourceSeq: 2, Status: 200, Correlation: "c-2", TraceID: trace},
	}
	var ack proto.AuditAck
	e.must("POST", "/api/v1/audit/events", agent.NodeToken, proto.AuditBatch{Source: "spool1", Events: evs}, &ack)
	if ack.Stored != 2 {
		t.Fatalf("ack = %+v, want 2 stored", ack)
	}
	var page proto.AuditPage
	e.must("GET", "/api/v1/audit/events?category=request&order=asc", e.admin.Token, nil, &page)
	if len(page.Events) != 2 || page.Events[0].TraceID != "" || page.Events[1].TraceID != trace {
		t.Fatalf("stored %+v, want the second with trace id %s", page.Events, trace)
	}
	e.must("GET", "/api/v1/audit/events?q="+trace, e.admin.Token, nil, &page)
	if len(page.Events) != 1 || page.Events[0].Correlation != "c-2" {
		t.Fatalf("search by trace id found %+v, want the event of c-2", page.Events)
	}
	var v proto.AuditVerification
	e.must("GET", "/api/v1/audit/verify", e.admin.Token, nil, &v)
	if !v.OK {
		t.Fatalf("verify = %+v", v)
	}
}

// TestAuditIndexBuiltOnStart: a store whose log was written before the
// audit index existed is indexed when the coordinator starts, which logs
// how many records it indexed and how long it took.
func TestAuditIndexBuiltOnStart(t *testing.T) {
	st := store.NewMem()
	err := st.Update(func(tx store.Tx) error {
		for i := range 300 {
			e := proto.AuditEvent{Code: proto.AuditRequest, Actor: fmt.Sprintf("user%d", i%7), Time: time.Now().Add(-time.Hour)}
			if _, err := auditlog.Append(tx, e); err != nil {
				return err
			}
		}
		// As an earlier version left it: no index.
		if err := emptyBucket(tx, store.AuditIndex); err != nil {
			return err
		}
		return tx.Delete(store.Meta, auditlog.MetaIndex)
	})
	if err != nil {
		t.Fatal(err)
	}
	var logs testkit.Buffer
	e := &testEnv{t: t, iss: newFakeIssuer(t), dir: t.TempDir(), st: st, configure: func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	}}
	e.start()
	testkit.WaitFor(t, "the coordinator to index the audit log", func() bool {
		return strings.Contains(logs.String(), `msg="indexed the audit log" records=300 took=`)
	})
	f := auditlog.Filter{User: "user3"}
	p, err := auditlog.Query(st, &f, "", false, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Events) != 43 {
		t.Fatalf("user3 has %d events, want 43", len(p.Events))
	}
	n := 0
	err = st.View(func(tx store.Tx) error {
		return tx.Scan(store.AuditIndex, "u/user3/", "u/user30", false, func(string, []byte) error {
			n++
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 43 {
		t.Fatalf("the index holds %d entries of user3, want 43 or more", n)
	}
}

// TestAuditIngestFitsTheStoreCommits: on a store that bounds the keys
// of a commit (etcd), an agent's batch larger than one commit takes is
// stored in several, each with the source's sequence, and acknowledged
// whole; the queued events of the coordinator are too.
func TestAuditIngestFitsTheStoreCommits(t *testing.T) {
	e := &testEnv{t: t, iss: newFakeIssuer(t), dir: t.TempDir(), st: storetest.Limit(store.NewMem(), 40)}
	e.start()
	admin := e.login("admin@example.com")
	var cl proto.CreateClusterResponse
	e.must("POST", "/api/v1/clusters", admin.Token, proto.CreateClusterRequest{Name: "prod"}, &cl)
	agent := e.registerAgent(cl.JoinToken, "")
	var b proto.AuditBatch
	b.Source = "spool1"
	for i := range 50 {
		b.Events = append(b.Events, proto.AuditEvent{Code: proto.AuditRequest, Time: time.Now().Add(time.Hour), Actor: fmt.Sprintf("user%d@example.com", i%4),
			SourceSeq: uint64(i + 1), Resource: &proto.AuditResource{Verb: "get", Resource: "pods"}, Status: 200})
	}
	var ack proto.AuditAck
	e.must("POST", "/api/v1/audit/events", agent.NodeToken, b, &ack)
	if ack.Acked != 50 || ack.Stored != 50 || ack.Duplicates != 0 {
		t.Fatalf("ack = %+v, want all 50 stored", ack)
	}
	e.must("POST", "/api/v1/audit/events", agent.NodeToken, b, &ack)
	if ack.Acked != 50 || ack.Stored != 0 || ack.Duplicates != 50 {
		t.Fatalf("resend ack = %+v, want 50 duplicates", ack)
	}
	var page proto.AuditPage
	e.must("GET", "/api/v1/audit/events?category=request&limit=1000", admin.Token, nil, &page)
	if len(page.Events) != 50 {
		t.Fatalf("stored %d request events, want 50", len(page.Events))
	}
	e.must("GET", "/api/v1/audit/events?code="+string(proto.AuditAgentClockSkew), admin.Token, nil, &page)
	if len(page.Events) != 1 || page.Events[0].Metadata["events"] != "50" {
		t.Fatalf("clock skew events = %+v, want one for the 50 events dated ahead", page.Events)
	}
	// The writer's queue, a burst larger than a commit.
	for i := range 30 {
		e.srv.audit(proto.AuditEvent{Code: proto.AuditDeviceGone, Actor: fmt.Sprintf("device:%d", i)})
	}
	e.srv.flushAudit()
	e.must("GET", "/api/v1/audit/events?code="+string(proto.AuditDeviceGone)+"&limit=1000", admin.Token, nil, &page)
	if len(page.Events) != 30 {
		t.Fatalf("stored %d queued events, want 30", len(page.Events))
	}
	if v := mustVerify(t, e.st); !v.OK {
		t.Fatalf("verify = %+v", v)
	}
}
