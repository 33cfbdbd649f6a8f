package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"k8s.io/client-go/rest"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// traceIDRE is a W3C trace id as the agent writes it.
var traceIDRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

// TestRequestEvents: kubectl through the mesh produces request events
// with the user, verb, resource, namespace, name, status, bytes, latency,
// correlation id and a trace id the agent started (kubectl sends none),
// and clustral audit shows them.
func TestRequestEvents(t *testing.T) {
	m := newMesh(t)
	startAgent(t, m.JoinToken, t.TempDir())
	m.alice.MustUp()
	k := m.alice.Kubectl()
	ctx := context.Background()
	if _, err := k.Run(ctx, "--context", "clustral-kind", "get", "configmap", "kube-root-ca.crt", "-n", "default"); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Run(ctx, "--context", "clustral-kind", "get", "secrets", "-n", "kube-system"); err == nil {
		t.Fatal("a viewer listed secrets")
	}

	q := url.Values{"category": {"request"}, "user": {alice.Email}}
	evs := m.waitEvents(t, q, 20*time.Second, func(evs []proto.AuditEvent) bool {
		var get, denied bool
		for _, e := range evs {
			get = get || e.Resource.Resource == "configmaps" && e.Resource.Name == "kube-root-ca.crt"
			denied = denied || e.Resource.Resource == "secrets"
		}
		return get && denied
	})
	for _, e := range evs {
		r := e.Resource
		switch {
		case r.Resource == "configmaps" && r.Name == "kube-root-ca.crt":
			if e.Code != proto.AuditRequest || r.Verb != "get" || r.Namespace != "default" || e.Status != 200 || e.Bytes == 0 ||
				e.Latency <= 0 || e.Cluster != "kind" || e.Outcome != proto.OutcomeSuccess || e.Source == "" || e.SourceSeq == 0 || e.Correlation == "" || !traceIDRE.MatchString(e.TraceID) {
				t.Errorf("get configmap event = %+v %+v", e, *r)
			}
		case r.Resource == "secrets":
			if e.Code != proto.AuditRequestFailed || r.Verb != "list" || r.Namespace != "kube-system" || e.Status != 403 || e.Outcome != proto.OutcomeFailure ||
				!traceIDRE.MatchString(e.TraceID) {
				t.Errorf("list secrets event = %+v %+v", e, *r)
			}
		}
	}

	// The CLI: JSON Lines, one event per line, with the filters.
	out, _, err := m.Admin.Run(ctx, "audit", "--user", alice.Email, "--resource", "configmaps", "--since", "1h", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	lines := 0
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var e proto.AuditEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if e.Actor != alice.Email || e.Resource == nil || e.Resource.Resource != "configmaps" {
			t.Errorf("filtered output has %+v", e)
		}
		lines++
	}
	if lines == 0 {
		t.Fatalf("clustral audit -o json printed no configmaps events:\n%s", out)
	}
	table, _, err := m.Admin.Run(ctx, "audit", "--category", "auth,assignment")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"AU002I", "AS001I", alice.Email} {
		if !strings.Contains(table, want) {
			t.Errorf("clustral audit table lacks %s:\n%s", want, table)
		}
	}
}

// loadGen sends requests through the mesh with client-go's transport for
// the user's kubeconfig context, one after another, and records the
// correlation id of every request answered 200.
type loadGen struct {
	rt  http.RoundTripper
	url string

	mu     sync.Mutex
	ok     []string // correlation ids, in order
	failed int
}

func newLoadGen(t *testing.T, u *harness.TestUser) *loadGen {
	t.Helper()
	cfg := u.RESTConfig()
	cfg.Timeout = 5 * time.Second
	rt, err := rest.TransportFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &loadGen{rt: rt, url: cfg.Host + "/api/v1/namespaces/default/configmaps?limit=1"}
}

// one sends one request and reports whether it was answered 200.
func (g *loadGen) one(ctx context.Context) bool {
	req, _ := http.NewRequestWithContext(ctx, "GET", g.url, nil)
	resp, err := g.rt.RoundTrip(req)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil {
		g.failed++
		return false
	}
	g.ok = append(g.ok, resp.Header.Get(proto.HeaderRequestID))
	return true
}

// run sends n successful requests, or fails after timeout.
func (g *loadGen) run(t *testing.T, n int, timeout time.Duration) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	for done := 0; done < n; {
		if ctx.Err() != nil {
			t.Fatalf("only %d of %d requests answered within %s (%d failed)", done, n, timeout, g.failed)
		}
		if g.one(ctx) {
			done++
		}
	}
	return time.Since(start)
}

func (g *loadGen) answered() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.ok...)
}

// checkExactlyOnce checks that every answered request has exactly one
// event, that no other request event of the user exists beyond the
// requests that failed, and that each spool's events are stored in
// order without duplicates.
func checkExactlyOnce(t *testing.T, evs []proto.AuditEvent, answered []string, failed int) {
	t.Helper()
	byCorr := map[string]int{}
	lastSeq := map[string]uint64{}
	lastStored := uint64(0)
	for _, e := range evs {
		if e.Resource == nil || e.Resource.Resource != "configmaps" {
			continue
		}
		byCorr[e.Correlation]++
		if e.SourceSeq <= lastSeq[e.Source] {
			t.Fatalf("source %s: event %d stored after %d (out of order or twice)", e.Source, e.SourceSeq, lastSeq[e.Source])
		}
		lastSeq[e.Source] = e.SourceSeq
		if e.Seq <= lastStored {
			t.Fatalf("coordinator sequence %d after %d", e.Seq, lastStored)
		}
		lastStored = e.Seq
	}
	for _, c := range answered {
		if n := byCorr[c]; n != 1 {
			t.Fatalf("request %s has %d events, want exactly 1", c, n)
		}
		delete(byCorr, c)
	}
	if len(byCorr) > failed {
		t.Fatalf("%d events of requests nobody saw answered, but only %d requests failed", len(byCorr), failed)
	}
}

// TestNoEventLost: with the coordinator down, 1,000 kubectl requests go
// on through the mesh and their events wait in the agent's spool; after
// the restart every one arrives exactly once, in order. Then the agent is
// killed mid-stream and a new one on the same spool directory delivers
// what the old one had not.
func TestNoEventLost(t *testing.T) {
	const n = 1000
	m := newMesh(t)
	spoolDir := filepath.Join(t.TempDir(), "spool")
	ag := startAgent(t, m.JoinToken, spoolDir)
	m.alice.MustUp()
	g := newLoadGen(t, m.alice)
	g.run(t, 10, 30*time.Second) // the mesh is up

	// 1. Coordinator outage.
	m.Coord.Stop()
	took := g.run(t, n, 2*time.Minute)
	t.Logf("outage: %d requests through the mesh in %s (%.0f/s) with the coordinator down", n, took.Round(time.Millisecond), n/took.Seconds())
	restart := time.Now()
	if err := m.Coord.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	up := time.Since(restart)
	q := url.Values{"category": {"request"}, "user": {alice.Email}}
	want := len(g.answered())
	evs := m.waitEvents(t, q, time.Minute, func(evs []proto.AuditEvent) bool { return countConfigmaps(evs) >= want })
	t.Logf("outage: all %d events stored %s after the coordinator restarted (ready after %s)", want, time.Since(restart).Round(time.Millisecond), up.Round(time.Millisecond))
	checkExactlyOnce(t, evs, g.answered(), g.failed)

	// 2. The agent dies (SIGKILL) while requests flow; a new agent takes
	// over the spool directory.
	ctx, cancel := context.WithCancel(context.Background())
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for ctx.Err() == nil {
			if !g.one(ctx) {
				time.Sleep(10 * time.Millisecond)
			}
		}
	}()
	before := len(g.answered())
	testkit.WaitForWithin(t, 30*time.Second, "200 requests before the kill", func() bool { return len(g.answered()) >= before+200 })
	ag.Proc.Kill()
	killedAt := len(g.answered())
	startAgent(t, m.JoinToken, spoolDir)
	testkit.WaitForWithin(t, time.Minute, "200 requests through the new agent", func() bool { return len(g.answered()) >= killedAt+200 })
	cancel()
	<-loopDone
	want = len(g.answered())
	evs = m.waitEvents(t, q, time.Minute, func(evs []proto.AuditEvent) bool { return countConfigmaps(evs) >= want })
	checkExactlyOnce(t, evs, g.answered(), g.failed)
	sources := map[string]bool{}
	for _, e := range evs {
		sources[e.Source] = true
	}
	if len(sources) != 1 {
		t.Errorf("events from %d spool sources, want 1: the new agent resumes the old spool", len(sources))
	}
	t.Logf("agent kill: %d requests answered in all, %d failed around the kill; every answered one has exactly one event", want, g.failed)

	var v proto.AuditVerification
	m.Admin.MustAPI("GET", "/api/v1/audit/verify", nil, &v)
	if !v.OK {
		t.Fatalf("verify after the outage = %+v", v)
	}
}

func countConfigmaps(evs []proto.AuditEvent) int {
	n := 0
	for _, e := range evs {
		if e.Resource != nil && e.Resource.Resource == "configmaps" {
			n++
		}
	}
	return n
}

// TestTamperingDetected: an edit of one stored record in the
// coordinator's bbolt file is caught by clustral audit verify, offline
// and online, which names the record.
func TestTamperingDetected(t *testing.T) {
	m := newMesh(t)
	ctx := context.Background()
	out, _, err := m.Admin.Run(ctx, "audit", "verify")
	if err != nil || !strings.Contains(out, "intact") {
		t.Fatalf("verify before tampering: %q %v", out, err)
	}
	m.Coord.Stop()
	db := filepath.Join(m.Coord.Dir, "data", "coordinator.db")
	const victim = 3
	editRecord(t, db, victim)

	// Offline, on the stopped coordinator's data directory.
	out, _, err = m.Admin.Run(ctx, "audit", "verify", "--data-dir", filepath.Join(m.Coord.Dir, "data"))
	if err == nil || !strings.Contains(out, fmt.Sprintf("BROKEN at record %d", victim)) {
		t.Fatalf("offline verify after tampering: %q %v", out, err)
	}
	// Online, against the restarted coordinator.
	if err := m.Coord.Start(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := verifyJSON(t, m, ctx)
	if err == nil || v.OK || v.BadSeq != victim || !strings.Contains(v.Problem, "edited") {
		t.Fatalf("online verify after tampering = %+v (err %v)", v, err)
	}
}

// editRecord changes the actor of audit record seq in the bbolt file,
// leaving its hash as it was.
func editRecord(t *testing.T, path string, seq uint64) {
	t.Helper()
	updateAudit(t, path, func(tx *bolt.Tx, b *bolt.Bucket) error {
		key := []byte(fmt.Sprintf("%020d", seq))
		var e map[string]any
		if err := json.Unmarshal(b.Get(key), &e); err != nil {
			return err
		}
		e["actor"] = "someone-else@example.com"
		raw, err := json.Marshal(e)
		if err != nil {
			return err
		}
		return b.Put(key, raw)
	})
}

// TestCheckpointCatchesTruncation: an administrator exports a signed
// checkpoint with the CLI and the log verifies against it, online and
// offline. Someone who can write the store then cuts the log back below
// the checkpoint's record, makes the head and the sequence agree and
// deletes every stored checkpoint: the chain alone still verifies, but
// the log no longer extends the exported checkpoint, offline and online.
func TestCheckpointCatchesTruncation(t *testing.T) {
	m := newMesh(t)
	ctx := context.Background()
	ckFile := filepath.Join(t.TempDir(), "checkpoint.json")
	out, _, err := m.Admin.Run(ctx, "audit", "checkpoint", "--file", ckFile)
	if err != nil || !strings.Contains(out, "written to "+ckFile) {
		t.Fatalf("audit checkpoint: %q %v", out, err)
	}
	raw, err := os.ReadFile(ckFile)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := proto.ParseAuditCheckpoint(raw)
	if err != nil {
		t.Fatalf("exported checkpoint %s: %v", raw, err)
	}
	out, _, err = m.Admin.Run(ctx, "audit", "verify", "--checkpoint", ckFile)
	if err != nil || !strings.Contains(out, "intact") || !strings.Contains(out, fmt.Sprintf("Extends the exported checkpoint of record %d", ck.Seq)) {
		t.Fatalf("verify against the export: %q %v", out, err)
	}
	m.alice.MustLogin() // more records after the checkpoint
	m.Coord.Stop()
	dataDir := filepath.Join(m.Coord.Dir, "data")
	out, _, err = m.Admin.Run(ctx, "audit", "verify", "--data-dir", dataDir, "--checkpoint", ckFile)
	if err != nil || !strings.Contains(out, "Extends the exported checkpoint") {
		t.Fatalf("offline verify against the export before tampering: %q %v", out, err)
	}

	truncateLog(t, filepath.Join(dataDir, "coordinator.db"), ck.Seq-1)
	out, _, err = m.Admin.Run(ctx, "audit", "verify", "--data-dir", dataDir)
	if err != nil || !strings.Contains(out, "intact") {
		t.Fatalf("offline verify without the export after the cut: %q %v (nothing left in the store to catch it)", out, err)
	}
	out, _, err = m.Admin.Run(ctx, "audit", "verify", "--data-dir", dataDir, "--checkpoint", ckFile)
	if err == nil || !strings.Contains(out, "BROKEN") || !strings.Contains(out, "cut off") {
		t.Fatalf("offline verify against the export after the cut: %q %v", out, err)
	}
	if err := m.Coord.Start(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := verifyJSON(t, m, ctx, "--checkpoint", ckFile)
	if err == nil || v.OK || !strings.Contains(v.Problem, "exported checkpoint") {
		t.Fatalf("online verify against the export after the cut = %+v (err %v)", v, err)
	}
}

// truncateLog removes the audit records after seq from the bbolt file,
// moves the head and the bucket's sequence back to seq and deletes every
// signed checkpoint, leaving a chain that verifies on its own.
func truncateLog(t *testing.T, path string, seq uint64) {
	t.Helper()
	updateAudit(t, path, func(tx *bolt.Tx, b *bolt.Bucket) error {
		var drop [][]byte
		b.ForEach(func(k, _ []byte) error {
			if string(k) > fmt.Sprintf("%020d", seq) {
				drop = append(drop, k)
			}
			return nil
		})
		for _, k := range drop {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		if err := b.SetSequence(seq); err != nil {
			return err
		}
		var last struct {
			Hash string `json:"hash"`
		}
		if err := json.Unmarshal(b.Get([]byte(fmt.Sprintf("%020d", seq))), &last); err != nil {
			return err
		}
		head, _ := json.Marshal(map[string]any{"seq": seq, "hash": last.Hash})
		if err := tx.Bucket([]byte("meta")).Put([]byte("audit_head"), head); err != nil {
			return err
		}
		if err := tx.DeleteBucket([]byte("audit_ckpt")); err != nil {
			return err
		}
		_, err := tx.CreateBucket([]byte("audit_ckpt"))
		return err
	})
}

// verifyJSON runs audit verify -o json against the running coordinator
// with args and returns the decoded verification and the command's error.
func verifyJSON(t *testing.T, m *testMesh, ctx context.Context, args ...string) (proto.AuditVerification, error) {
	t.Helper()
	out, _, err := m.Admin.Run(ctx, append(append([]string{"audit", "verify"}, args...), "-o", "json")...)
	var v proto.AuditVerification
	if jerr := json.Unmarshal([]byte(out), &v); jerr != nil {
		t.Fatalf("verify -o json = %q: %v", out, jerr)
	}
	return v, err
}

// updateAudit opens the stopped coordinator's bbolt file at path and runs
// edit in one write transaction with the audit bucket.
func updateAudit(t *testing.T, path string, edit func(tx *bolt.Tx, audit *bolt.Bucket) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("audit"))
		if b == nil {
			return errors.New("no audit bucket")
		}
		return edit(tx, b)
	})
	if err != nil {
		t.Fatal(err)
	}
}
