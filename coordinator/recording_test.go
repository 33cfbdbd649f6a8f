package coordinator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// TestRoleRecordingValidatedAndDelivered: a role's recording policy is
// checked when it is written and reaches the agents in the role's grants.
func TestRoleRecordingValidatedAndDelivered(t *testing.T) {
	e := newAccessEnv(t)
	for _, tt := range []struct {
		name string
		role proto.Role
		want string
	}{
		{"unknown policy", proto.Role{Name: "broken", Groups: []string{"g"}, Recording: "always"}, `recording policy "always" is not one of off, best-effort, required`},
		{"stdin without recording", proto.Role{Name: "broken", Groups: []string{"g"}, RecordStdin: true}, "records stdin but records no sessions"},
		{"stdin with recording off", proto.Role{Name: "broken", Groups: []string{"g"}, Recording: proto.RecordingOff, RecordStdin: true}, "records stdin but records no sessions"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if status, p := e.call("POST", "/api/v1/roles", e.admin.Token, tt.role, nil); status != 400 || p.Code != proto.CodeBadRequest || !strings.Contains(p.Title+p.Detail, tt.want) {
				t.Fatalf("create %+v = %d %+v, want 400 naming %s", tt.role, status, p, tt.want)
			}
		})
	}
	e.must("POST", "/api/v1/assignments", e.admin.Token, proto.Assignment{User: "alice@example.com", Role: "viewer", Cluster: "prod"}, nil)
	e.agentMap.next()
	e.must("PUT", "/api/v1/roles/viewer", e.admin.Token, proto.Role{Groups: []string{"viewers"}, Recording: proto.RecordingRequired, RecordStdin: true}, nil)
	m := e.agentMap.next()
	if len(m.Peers) != 1 || m.Peers[0].Identity.Roles[0].Recording != proto.RecordingRequired || !m.Peers[0].Identity.Roles[0].RecordStdin {
		t.Fatalf("role update delta = %+v", m)
	}
	var got proto.Role
	e.must("GET", "/api/v1/roles/viewer", e.admin.Token, nil, &got)
	if got.Recording != proto.RecordingRequired || !got.RecordStdin {
		t.Fatalf("stored role = %+v", got)
	}
}

// castFile is a small recording of session id on cluster.
func castFile(t *testing.T, id, cluster, user, pod string, start time.Time) []byte {
	t.Helper()
	h, err := json.Marshal(proto.RecordingHeader{Version: 2, Width: 80, Height: 24, Timestamp: start.Unix(),
		Session: proto.RecordingSession{ID: id, User: user, Cluster: cluster, Namespace: "default", Pod: pod, Subresource: "exec",
			Protocol: "v5.channel.k8s.io (websocket)", Start: start, Correlation: id}})
	if err != nil {
		t.Fatal(err)
	}
	return append(h, "\n[0.100000, \"o\", \"$ whoami\\r\\nroot\\r\\n\"]\n"...)
}

// readRecording reads the stored recording id (or with id
// "<id>?live=true" its live part) from the coordinator at url as the
// holder of token.
func readRecording(t *testing.T, url, token, id string) []byte {
	t.Helper()
	var b []byte
	rc, err := coordclient.New(url, token, http.DefaultClient).Open(context.Background(), "/api/v1/recordings/"+id, nil)
	if err == nil {
		b, err = io.ReadAll(rc)
		rc.Close()
	}
	if err != nil {
		t.Fatalf("read recording %s: %v", id, err)
	}
	return b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestRecordingsShippedListedAndVerified: an agent ships recordings of
// its own cluster only, once; administrators list and read them; audit
// verify checks each stored recording against the digest in its
// session's end event, and names the one edited.
func TestRecordingsShippedListedAndVerified(t *testing.T) {
	e := newAccessEnv(t)
	var agent proto.RegisterResponse
	e.must("POST", "/api/v1/agents", e.joinToken, proto.RegisterAgentRequest{PublicKey: newKey(t), CSR: newCSR(t)}, &agent)
	api := coordclient.New(e.ts.URL, agent.NodeToken, http.DefaultClient)
	ctx := context.Background()
	t0 := time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)
	rec1 := castFile(t, "s-1", "prod", "alice@example.com", "web-0", t0)
	rec2 := castFile(t, "s-2", "prod", "bob@example.com", "db-0", t0.Add(time.Hour))

	for _, tt := range []struct {
		name, id string
		body     []byte
		status   int
		want     string
	}{
		{"other cluster", "s-9", castFile(t, "s-9", "staging", "alice@example.com", "web-0", t0), 400, `this agent may ship only session "s-9" of cluster "prod"`},
		{"other id", "s-8", rec1, 400, `recording names session "s-1"`},
		{"no header", "s-7", []byte("[0.1, \"o\", \"x\"]"), 400, "no complete header line"},
		{"not asciicast v2", "s-6", []byte(`{"version":1,"clustral":{"id":"s-6","cluster":"prod"}}` + "\n"), 400, "want asciicast version 2"},
		{"bad id", "-x", rec1, 400, "is not letters, digits"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := api.PutRecording(ctx, tt.id, bytes.NewReader(tt.body))
			var ce *coordclient.Error
			if !errors.As(err, &ce) || ce.Status != tt.status || !strings.Contains(ce.Title, tt.want) {
				t.Fatalf("put = %v, want %d naming %q", err, tt.status, tt.want)
			}
		})
	}
	for _, b := range [][]byte{rec1, rec1, rec2} { // a resend is stored once
		id := map[bool]string{true: "s-1", false: "s-2"}[bytes.Equal(b, rec1)]
		info, err := api.PutRecording(ctx, id, bytes.NewReader(b))
		if err != nil || info.SHA256 != sha(b) || info.Bytes != int64(len(b)) {
			t.Fatalf("put %s = %+v, %v", id, info, err)
		}
	}
	if _, err := api.PutRecording(ctx, "s-1", bytes.NewReader(append(rec1, '\n'))); err == nil || !strings.Contains(err.Error(), "already stored with other content") {
		t.Fatalf("put other bytes under s-1 = %v", err)
	}
	if status, _ := e.call("GET", "/api/v1/recordings", e.alice.Token, nil, nil); status != http.StatusForbidden {
		t.Errorf("list by a non-admin = %d", status)
	}

	for _, tt := range []struct {
		query string
		want  []string
	}{
		{"", []string{"s-2", "s-1"}},
		{"?user=alice@example.com", []string{"s-1"}},
		{"?pod=db-0&cluster=prod", []string{"s-2"}},
		{"?since=2026-03-04T10:30:00Z", []string{"s-2"}},
		{"?cluster=staging", nil},
	} {
		var got []proto.RecordingInfo
		e.must("GET", "/api/v1/recordings"+tt.query, e.admin.Token, nil, &got)
		var ids []string
		for _, ri := range got {
			ids = append(ids, ri.Session.ID)
		}
		if !slices.Equal(ids, tt.want) {
			t.Errorf("list%s = %v, want %v", tt.query, ids, tt.want)
		}
	}
	if status, p := e.call("GET", "/api/v1/recordings?since=yesterday", e.admin.Token, nil, nil); status != 400 || !strings.Contains(p.Title, "RFC 3339") {
		t.Errorf("bad since = %d %+v", status, p)
	}
	if got := readRecording(t, e.ts.URL, e.admin.Token, "s-1"); !bytes.Equal(got, rec1) {
		t.Errorf("read back %q", got)
	}
	if status, _ := e.call("GET", "/api/v1/recordings/s-404", e.admin.Token, nil, nil); status != 404 {
		t.Errorf("missing recording = %d", status)
	}

	// Before their end events arrive, verify vouches for neither
	// recording and says so.
	var v proto.AuditVerification
	e.must("GET", "/api/v1/audit/verify", e.admin.Token, nil, &v)
	if !v.OK || v.Recordings != 0 || v.Unvouched != 2 || !slices.Equal(v.UnvouchedIDs, []string{"s-1", "s-2"}) {
		t.Fatalf("verify before the end events = %+v, want OK with s-1 and s-2 unvouched", v)
	}

	// The end events carry the digests (s-1's agent was killed: the
	// next one vouches for it with RQ005W).
	end := func(seq uint64, code proto.AuditCode, id string, b []byte) proto.AuditEvent {
		return proto.AuditEvent{Code: code, Time: time.Now(), Actor: "alice@example.com", SourceSeq: seq, Correlation: id,
			Resource: &proto.AuditResource{Verb: "create", Resource: "pods", Subresource: "exec"}, Status: 101,
			Metadata: map[string]string{proto.MetaRecording: id, proto.MetaRecordingSHA256: sha(b), proto.MetaRecordingStatus: proto.RecordingComplete}}
	}
	e.must("POST", "/api/v1/audit/events", agent.NodeToken, proto.AuditBatch{Source: "spool", Events: []proto.AuditEvent{
		end(1, proto.AuditRecordingRescued, "s-1", rec1), end(2, proto.AuditStreamEnded, "s-2", rec2)}}, nil)
	v = proto.AuditVerification{}
	e.must("GET", "/api/v1/audit/verify", e.admin.Token, nil, &v)
	if !v.OK || v.Recordings != 2 || v.Unvouched != 0 {
		t.Fatalf("verify = %+v, want OK with 2 recordings checked", v)
	}
	var page proto.AuditPage
	e.must("GET", "/api/v1/audit/events?q=s-2", e.admin.Token, nil, &page)
	if len(page.Events) != 1 {
		t.Fatalf("end event of s-2: %+v", page.Events)
	}

	// One byte of s-2 edited: verify names it, at its end event.
	p := filepath.Join(e.dir, "recordings", "s-2.cast")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-5] ^= 1
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	e.must("GET", "/api/v1/audit/verify", e.admin.Token, nil, &v)
	if v.OK || v.BadSeq != page.Events[0].Seq || v.BadRecording != "s-2" || !strings.Contains(v.Problem, "recording s-2 was edited") {
		t.Fatalf("verify after an edit = %+v, want it to name s-2 at record %d", v, page.Events[0].Seq)
	}
}

// TestRecordingFollowedLive: an agent appends a running session's
// recording as it goes; an administrator reads it from an offset, marked
// live, and, once the agent stored the whole recording, marked stored
// with nothing lost between the two.
func TestRecordingFollowedLive(t *testing.T) {
	e := newAccessEnv(t)
	var agent proto.RegisterResponse
	e.must("POST", "/api/v1/agents", e.joinToken, proto.RegisterAgentRequest{PublicKey: newKey(t), CSR: newCSR(t)}, &agent)
	api := coordclient.New(e.ts.URL, agent.NodeToken, http.DefaultClient)
	admin := coordclient.New(e.ts.URL, e.admin.Token, http.DefaultClient)
	ctx := context.Background()
	rec := castFile(t, "run-1", "prod", "alice@example.com", "web-0", time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC))
	rec = append(rec, "[0.200000, \"o\", \"$ \"]\n"...)
	head := bytes.IndexByte(rec, '\n') + 1

	// read returns the recording from off, and its state.
	read := func(off int) (string, string, int) {
		t.Helper()
		req, err := http.NewRequest("GET", e.ts.URL+"/api/v1/recordings/run-1?live=true&offset="+strconv.Itoa(off), nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+e.admin.Token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), resp.Header.Get(proto.HeaderRecordingState), resp.StatusCode
	}
	if _, _, status := read(0); status != 404 {
		t.Fatalf("before any part: %d, want 404", status)
	}
	for _, tt := range []struct {
		name   string
		id     string
		off    int
		body   []byte
		status int
		want   string
	}{
		{"other cluster", "run-9", 0, castFile(t, "run-9", "staging", "alice@example.com", "web-0", time.Now()), 400, `may ship only session "run-9" of cluster "prod"`},
		{"no header", "run-1", 0, rec[head:], 400, "recording header is not JSON"},
		{"gap", "run-1", head + 3, rec[head+3:], 409, "past the end"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := api.AppendRecording(ctx, tt.id, int64(tt.off), bytes.NewReader(tt.body))
			var ce *coordclient.Error
			if !errors.As(err, &ce) || ce.Status != tt.status || !strings.Contains(ce.Title, tt.want) {
				t.Fatalf("append = %v, want %d naming %q", err, tt.status, tt.want)
			}
		})
	}
	// Nobody watches yet; reading the live recording is watching it.
	if a, err := api.AppendRecording(ctx, "run-1", 0, bytes.NewReader(rec[:head+5])); err != nil || a.Bytes != int64(head+5) || a.Watched {
		t.Fatalf("first part = %+v, %v; want %d bytes, not watched", a, err, head+5)
	}
	if got, state, _ := read(0); got != string(rec[:head+5]) || state != proto.RecordingStateLive {
		t.Fatalf("live from 0 = %q (%s)", got, state)
	}
	if a, err := api.AppendRecording(ctx, "run-1", int64(head+5), bytes.NewReader(rec[head+5:len(rec)-3])); err != nil || a.Bytes != int64(len(rec)-3) || !a.Watched {
		t.Fatalf("second part = %+v, %v; want %d bytes, watched", a, err, len(rec)-3)
	}
	if got, state, _ := read(head); got != string(rec[head:len(rec)-3]) || state != proto.RecordingStateLive {
		t.Fatalf("live from %d = %q (%s)", head, got, state)
	}
	// Without ?live=true only stored recordings are answered.
	if status, _ := e.call("GET", "/api/v1/recordings/run-1", e.admin.Token, nil, nil); status != 404 {
		t.Errorf("a live recording without ?live: %d, want 404", status)
	}
	if _, err := api.PutRecording(ctx, "run-1", bytes.NewReader(rec)); err != nil {
		t.Fatal(err)
	}
	if got, state, _ := read(len(rec) - 3); got != string(rec[len(rec)-3:]) || state != proto.RecordingStateStored {
		t.Fatalf("stored from %d = %q (%s)", len(rec)-3, got, state)
	}
	if _, err := api.AppendRecording(ctx, "run-1", 0, bytes.NewReader(rec)); err == nil || !strings.Contains(err.Error(), "already stored") {
		t.Errorf("append after the end = %v, want a conflict", err)
	}
	rc, err := admin.Open(ctx, "/api/v1/recordings/run-1?offset=x", nil)
	if err == nil {
		rc.Close()
		t.Errorf("a bad offset was accepted")
	}
}

// TestRecordingRetention: recordings whose sessions started before the
// retention are removed, each with an AL006I naming it, except one that
// an audit event an export destination has not taken yet names; that
// one goes once the destination has it. Newer recordings stay.
func TestRecordingRetention(t *testing.T) {
	t0 := time.Now().UTC().Truncate(time.Second)
	// The clock runs (the exporter's back-off waits on it), ahead of
	// real time by skew.
	var skew atomic.Int64
	rcv := newExportReceiver(t)
	e := newTestEnvWith(t, func(c *Config) {
		rcv.configure(c)
		c.RecordingRetention = 24 * time.Hour
		c.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	})
	for _, r := range []struct {
		id    string
		start time.Time
	}{{"old-1", t0.Add(-time.Hour)}, {"held-2", t0.Add(-time.Hour)}, {"new-3", t0.Add(47 * time.Hour)}} {
		if _, err := e.srv.recordings.Put(r.id, bytes.NewReader(castFile(t, r.id, "prod", "alice@example.com", "web-0", r.start))); err != nil {
			t.Fatal(err)
		}
	}
	// held-2's end event, which the destination (down) has not taken.
	if err := e.srv.store.Update(func(tx store.Tx) error {
		_, err := auditlog.Append(tx, proto.AuditEvent{Code: proto.AuditStreamEnded, Time: t0, Actor: "alice@example.com", Cluster: "prod",
			Correlation: "held-2", Metadata: map[string]string{proto.MetaRecording: "held-2", proto.MetaRecordingSHA256: "00"}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	skew.Store(int64(48 * time.Hour))

	stored := func() []string {
		t.Helper()
		list, err := e.srv.recordings.List()
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, ri := range list {
			ids = append(ids, ri.Session.ID)
		}
		slices.Sort(ids)
		return ids
	}
	pruned := func(id string) {
		t.Helper()
		testkit.WaitFor(t, "AL006I for "+id, func() bool {
			page, err := auditlog.Query(e.srv.store, &auditlog.Filter{Codes: map[proto.AuditCode]bool{proto.AuditRecordingPruned: true}, Text: id}, "", true, 10)
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range page.Events {
				if ev.Correlation == id && ev.Metadata[proto.MetaRecording] == id && ev.Metadata["retention"] == "24h0m0s" && ev.Metadata[proto.MetaRecordingSHA256] != "" {
					return true
				}
			}
			return false
		})
	}
	e.srv.pruneRecordings()
	if got, want := stored(), []string{"held-2", "new-3"}; !slices.Equal(got, want) {
		t.Fatalf("stored after retention, destination behind: %v, want %v", got, want)
	}
	pruned("old-1")

	rcv.down.Store(false)
	testkit.WaitFor(t, "the destination took held-2's end event", func() bool {
		held, err := e.srv.heldRecordings()
		return err == nil && !held["held-2"]
	})
	e.srv.pruneRecordings()
	if got, want := stored(), []string{"new-3"}; !slices.Equal(got, want) {
		t.Fatalf("stored after retention, destination caught up: %v, want %v", got, want)
	}
	pruned("held-2")
}

// TestRecordingRetentionConfig: a negative retention is refused with a
// sentence saying what to give; none keeps everything.
func TestRecordingRetentionConfig(t *testing.T) {
	c := Config{RecordingRetention: -time.Hour}
	if _, err := c.withDefaults(); err == nil || !strings.Contains(err.Error(), "give 0 to keep recordings for ever") {
		t.Errorf("negative retention: %v", err)
	}
}

// TestRecordingsAcrossReplicas: replicas that share their store keep
// recordings in it, so a recording an agent shipped to one replica is
// listed, read and verified on another.
func TestRecordingsAcrossReplicas(t *testing.T) {
	envs := newReplicaEnvs(t, 2)
	a, b := envs[0], envs[1]
	admin := a.login("admin@example.com")
	agent := a.registerAgent(a.createCluster(admin.Token, "prod").JoinToken, "node-1")
	testkit.WaitFor(t, "b to know the admin's session", func() bool {
		st, _ := b.call("GET", "/api/v1/whoami", admin.Token, nil, nil)
		return st == http.StatusOK
	})
	rec := castFile(t, "s-1", "prod", "alice@example.com", "web-0", time.Now())
	if _, err := coordclient.New(a.ts.URL, agent.NodeToken, http.DefaultClient).PutRecording(context.Background(), "s-1", bytes.NewReader(rec)); err != nil {
		t.Fatal(err)
	}
	var list []proto.RecordingInfo
	b.must("GET", "/api/v1/recordings", admin.Token, nil, &list)
	if len(list) != 1 || list[0].Session.ID != "s-1" || list[0].SHA256 != sha(rec) {
		t.Fatalf("list on the other replica = %+v", list)
	}
	if got := readRecording(t, b.ts.URL, admin.Token, "s-1"); !bytes.Equal(got, rec) {
		t.Errorf("read back on the other replica: %q", got)
	}
	a.must("POST", "/api/v1/audit/events", agent.NodeToken, proto.AuditBatch{Source: "spool", Events: []proto.AuditEvent{{
		Code: proto.AuditStreamEnded, Time: time.Now(), Actor: "alice@example.com", SourceSeq: 1, Correlation: "s-1", Status: 101,
		Resource: &proto.AuditResource{Verb: "create", Resource: "pods", Subresource: "exec"},
		Metadata: map[string]string{proto.MetaRecording: "s-1", proto.MetaRecordingSHA256: sha(rec), proto.MetaRecordingStatus: proto.RecordingComplete}}}}, nil)
	testkit.WaitFor(t, "verify on the other replica checks the recording", func() bool {
		var v proto.AuditVerification
		b.must("GET", "/api/v1/audit/verify", admin.Token, nil, &v)
		return v.OK && v.Recordings == 1
	})

	// A running session the agent ships to a is watched on b: b reads
	// the live part, and a tells the agent someone watches.
	api := coordclient.New(a.ts.URL, agent.NodeToken, http.DefaultClient)
	run := append(castFile(t, "run-1", "prod", "alice@example.com", "web-0", time.Now()), "[0.200000, \"o\", \"$ \"]\n"...)
	head := bytes.IndexByte(run, '\n') + 1
	if ap, err := api.AppendRecording(context.Background(), "run-1", 0, bytes.NewReader(run[:head])); err != nil || ap.Watched {
		t.Fatalf("header = %+v, %v; want stored, not watched", ap, err)
	}
	if got := readRecording(t, b.ts.URL, admin.Token, "run-1?live=true"); !bytes.Equal(got, run[:head]) {
		t.Fatalf("live part on the other replica = %q, want the header", got)
	}
	ap, err := api.AppendRecording(context.Background(), "run-1", int64(head), bytes.NewReader(run[head:]))
	if err != nil || !ap.Watched || ap.Bytes != int64(len(run)) {
		t.Fatalf("append while b's watcher reads = %+v, %v; want %d bytes, watched", ap, err, len(run))
	}
	if got := readRecording(t, b.ts.URL, admin.Token, "run-1?live=true"); !bytes.Equal(got, run) {
		t.Errorf("live part on the other replica = %q, want %q", got, run)
	}
}
