package auditexport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

func TestMain(m *testing.M) { testkit.VerifyNoLeaks(m) }

// fakeSender records what it took; while down it refuses, and while
// blocked it waits for its context.
type fakeSender struct {
	mu      sync.Mutex
	got     []uint64 // sequence numbers, in the order taken
	batches int
	down    bool
	block   bool
	closed  int
}

func (f *fakeSender) Send(ctx context.Context, evs []proto.AuditEvent) error {
	f.mu.Lock()
	block, down := f.block, f.down
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return ctx.Err()
	}
	if down {
		return errors.New("connection refused")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batches++
	for _, e := range evs {
		f.got = append(f.got, e.Seq)
	}
	return nil
}

func (f *fakeSender) Close() error { f.mu.Lock(); f.closed++; f.mu.Unlock(); return nil }

func (f *fakeSender) set(down, block bool) { f.mu.Lock(); f.down, f.block = down, block; f.mu.Unlock() }

func (f *fakeSender) taken() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint64(nil), f.got...)
}

func openStore(t *testing.T, path string) store.Store {
	t.Helper()
	st, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func appendEvents(t *testing.T, st store.Store, at time.Time, n int) {
	t.Helper()
	err := st.Update(func(tx store.Tx) error {
		for i := range n {
			if _, err := auditlog.Append(tx, proto.AuditEvent{Code: proto.AuditRequest, Time: at, Actor: fmt.Sprintf("user%d", i%3)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// running is an Exporter with fake senders, run until the test ends or
// stop is called.
type running struct {
	x      *Exporter
	reg    *prometheus.Registry
	audits chan proto.AuditEvent
	stop   func()
}

func runFake(t *testing.T, st store.Store, senders map[string]*fakeSender, start string) *running {
	t.Helper()
	m := map[string]sender{}
	for k, v := range senders {
		m[k] = v
	}
	return runFakeWith(t, st, m, start)
}

func runFakeWith(t *testing.T, st store.Store, senders map[string]sender, start string) *running {
	t.Helper()
	r := &running{reg: prometheus.NewRegistry(), audits: make(chan proto.AuditEvent, 100)}
	x, err := New(Config{Store: st, Registerer: r.reg, Poll: 5 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
		Audit: func(e proto.AuditEvent) { r.audits <- e }})
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range senders {
		d := Destination{Name: name, Kind: "fake", Start: start, Batch: 7, RetryMin: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond, Timeout: time.Second}
		x.dests = append(x.dests, &dest{Destination: d, send: s})
		x.m.init(name)
	}
	r.x = x
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { x.Run(ctx); close(done) }()
	var once sync.Once
	r.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(r.stop)
	return r
}

func seqs(from, to uint64) []uint64 {
	var s []uint64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func equal(a, b []uint64) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

func cursorOf(t *testing.T, st store.Store, name string) auditlog.Mark {
	t.Helper()
	var m auditlog.Mark
	if err := st.View(func(tx store.Tx) error {
		var err error
		m, _, err = readCursor(tx, name)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestExportInOrderAndResumes: every event reaches each destination in
// order; the cursor is stored, so a new exporter on the same store (a
// restarted coordinator) sends only what came after it.
func TestExportInOrderAndResumes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "coordinator.db")
	st := openStore(t, path)
	defer func() { st.Close() }()
	now := time.Now().UTC()
	appendEvents(t, st, now, 30)
	a, b := &fakeSender{}, &fakeSender{}
	r := runFake(t, st, map[string]*fakeSender{"a": a, "b": b}, StartOldest)
	testkit.WaitFor(t, "both destinations take events 1-30", func() bool {
		return equal(a.taken(), seqs(1, 30)) && equal(b.taken(), seqs(1, 30))
	})
	if a.batches < 5 {
		t.Errorf("30 events in %d batches of at most 7", a.batches)
	}
	appendEvents(t, st, now, 5)
	testkit.WaitFor(t, "events appended later follow", func() bool { return equal(a.taken(), seqs(1, 35)) })
	testkit.WaitFor(t, "cursor stored", func() bool { return cursorOf(t, st, "a").Seq == 35 })
	r.stop()

	// A restart: the store reopened, events appended while the
	// exporter was away.
	st.Close()
	st = openStore(t, path)
	appendEvents(t, st, now, 3)
	a2 := &fakeSender{}
	runFake(t, st, map[string]*fakeSender{"a": a2}, StartOldest)
	testkit.WaitFor(t, "the restarted exporter resumes after its cursor", func() bool { return equal(a2.taken(), seqs(36, 38)) })
}

// TestExportStartNow: a new destination with start=now gets only what
// is stored after it first looked.
func TestExportStartNow(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "coordinator.db"))
	t.Cleanup(func() { st.Close() })
	appendEvents(t, st, time.Now(), 10)
	a := &fakeSender{}
	runFake(t, st, map[string]*fakeSender{"a": a}, StartNow)
	testkit.WaitFor(t, "cursor at the head", func() bool { return cursorOf(t, st, "a").Seq == 10 })
	appendEvents(t, st, time.Now(), 2)
	testkit.WaitFor(t, "only new events", func() bool { return equal(a.taken(), seqs(11, 12)) })
}

// TestExportDownBacksOffAndCatchesUp: a destination that refuses is
// retried with back-off; appends go on meanwhile (the exporter is not in
// their path), the lag metric grows, the failure and the recovery are
// audited, and once it answers it gets every event, in order, once.
func TestExportDownBacksOffAndCatchesUp(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "coordinator.db"))
	t.Cleanup(func() { st.Close() })
	a := &fakeSender{down: true}
	r := runFake(t, st, map[string]*fakeSender{"a": a}, StartOldest)
	appendEvents(t, st, time.Now().Add(-time.Minute), 20)
	testkit.WaitFor(t, "lag metric counts the 20 events", func() bool {
		return testutil.ToFloat64(r.x.m.lagEvents.WithLabelValues("a")) == 20 &&
			testutil.ToFloat64(r.x.m.lagSeconds.WithLabelValues("a")) >= 60
	})
	testkit.WaitFor(t, "several failures", func() bool { return testutil.ToFloat64(r.x.m.failures.WithLabelValues("a")) >= 3 })
	if e := testkit.Recv(t, r.audits, "failure audited"); e.Code != proto.AuditExportFailing || e.Metadata["destination"] != "a" || e.Metadata["pending"] != "20" {
		t.Fatalf("audit = %+v, want AL003W for a with 20 pending", e)
	}
	select {
	case e := <-r.audits:
		t.Fatalf("a second audit event while still failing: %+v", e)
	default:
	}
	if len(a.taken()) != 0 {
		t.Fatal("a destination that refuses took events")
	}
	a.set(false, false)
	testkit.WaitFor(t, "caught up after recovery", func() bool { return equal(a.taken(), seqs(1, 20)) })
	if e := testkit.Recv(t, r.audits, "recovery audited"); e.Code != proto.AuditExportRecovered {
		t.Fatalf("audit = %+v, want AL004I", e)
	}
	testkit.WaitFor(t, "lag back to zero", func() bool {
		return testutil.ToFloat64(r.x.m.lagEvents.WithLabelValues("a")) == 0 &&
			testutil.ToFloat64(r.x.m.lagSeconds.WithLabelValues("a")) == 0
	})
	if got := testutil.ToFloat64(r.x.m.sent.WithLabelValues("a")); got != 20 {
		t.Errorf("sent_total = %v, want 20", got)
	}
	if testutil.ToFloat64(r.x.m.lastSuccess.WithLabelValues("a")) == 0 {
		t.Error("last success time not set")
	}
}

// TestExportBlockedDestinationDoesNotBlock: a destination that hangs
// holds up neither the other destination nor the appends, and its
// cursor does not move.
func TestExportBlockedDestinationDoesNotBlock(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "coordinator.db"))
	t.Cleanup(func() { st.Close() })
	hung, ok := &fakeSender{block: true}, &fakeSender{}
	runFake(t, st, map[string]*fakeSender{"hung": hung, "ok": ok}, StartOldest)
	for range 10 {
		appendEvents(t, st, time.Now(), 10)
	}
	testkit.WaitFor(t, "the healthy destination takes all", func() bool { return equal(ok.taken(), seqs(1, 100)) })
	if c := cursorOf(t, st, "hung"); c.Seq != 0 {
		t.Fatalf("the hung destination's cursor moved to %d", c.Seq)
	}
}

// TestExportHoldAndGap: retention keeps what a destination has not
// taken (Hold); records pruned while a destination was not configured
// are audited as a gap, and so is a cursor past the end of the chain (a
// store restored from an older backup).
func TestExportHoldAndGap(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "coordinator.db"))
	t.Cleanup(func() { st.Close() })
	old := time.Now().Add(-10 * 24 * time.Hour)
	appendEvents(t, st, old, 10)
	a := &fakeSender{down: true}
	r := runFake(t, st, map[string]*fakeSender{"a": a}, StartOldest)
	testkit.WaitFor(t, "cursor created", func() bool {
		h, err := r.x.Hold()
		return err == nil && h == 0 && cursorOf(t, st, "a").Seq == 0
	})
	if n, _ := auditlog.PruneHeld(st, 24*time.Hour, time.Now(), 0); n != 0 {
		t.Fatalf("pruned %d records no destination took", n)
	}
	a.set(false, false)
	testkit.WaitFor(t, "taken", func() bool { return len(a.taken()) == 10 })
	testkit.WaitFor(t, "hold follows the cursor", func() bool { h, _ := r.x.Hold(); return h == 10 })
	r.stop()

	// Pruned while no exporter ran, after the cursor (it was at 4).
	st.Update(func(tx store.Tx) error { return store.Put(tx, store.Meta, CursorKey("a"), auditlog.Mark{Seq: 4}) })
	if n, err := auditlog.Prune(st, 24*time.Hour, time.Now()); n != 10 || err != nil {
		t.Fatalf("pruned %d, %v", n, err)
	}
	appendEvents(t, st, time.Now(), 2)
	a2 := &fakeSender{}
	r2 := runFake(t, st, map[string]*fakeSender{"a": a2}, StartOldest)
	e := testkit.Recv(t, r2.audits, "gap audited")
	if e.Code != proto.AuditExportGap || e.Metadata["first"] != "5" || e.Metadata["last"] != "10" {
		t.Fatalf("audit = %+v, want AL005E for 5-10", e)
	}
	testkit.WaitFor(t, "goes on after the gap", func() bool { return equal(a2.taken(), seqs(11, 12)) })
	r2.stop()

	// A cursor past the head.
	st.Update(func(tx store.Tx) error { return store.Put(tx, store.Meta, CursorKey("a"), auditlog.Mark{Seq: 99}) })
	a3 := &fakeSender{}
	r3 := runFake(t, st, map[string]*fakeSender{"a": a3}, StartOldest)
	if e := testkit.Recv(t, r3.audits, "gap audited"); e.Code != proto.AuditExportGap || e.Metadata["last"] != "99" {
		t.Fatalf("audit = %+v, want AL005E up to 99", e)
	}
	testkit.WaitFor(t, "exports the kept records again", func() bool { return equal(a3.taken(), seqs(11, 12)) })
}

func TestNewRefusesSharedName(t *testing.T) {
	d, err := Parse("otlp+https://127.0.0.1:4318/v1/logs")
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(Config{Store: store.NewMem(), Destinations: []Destination{d, d}})
	if err == nil || !contains(err.Error(), "name=") {
		t.Fatalf("New = %v, want an error asking for name=", err)
	}
}

// rejectingSender takes every batch but reports records rejected, as an
// OTLP receiver's partial success does.
type rejectingSender struct{ fakeSender }

func (r *rejectingSender) Send(ctx context.Context, evs []proto.AuditEvent) error {
	if err := r.fakeSender.Send(ctx, evs); err != nil {
		return err
	}
	return &RejectedError{Msg: "OTLP partial success: too old (1 logs rejected)"}
}

// TestExportRejectedRecordsAreNotResent: a batch the receiver took with
// some records rejected moves the cursor (a resend would be rejected
// again) and is counted, not retried.
func TestExportRejectedRecordsAreNotResent(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "coordinator.db"))
	t.Cleanup(func() { st.Close() })
	appendEvents(t, st, time.Now(), 3)
	rs := &rejectingSender{}
	r := runFakeWith(t, st, map[string]sender{"a": rs}, StartOldest)
	testkit.WaitFor(t, "cursor past the batch", func() bool { return cursorOf(t, st, "a").Seq == 3 })
	if got := testutil.ToFloat64(r.x.m.rejected.WithLabelValues("a")); got != 1 {
		t.Errorf("rejected batches = %v, want 1", got)
	}
	if got := testutil.ToFloat64(r.x.m.failures.WithLabelValues("a")); got != 0 {
		t.Errorf("failures = %v, want 0", got)
	}
	if !equal(rs.taken(), seqs(1, 3)) {
		t.Errorf("taken %v, want each once", rs.taken())
	}
}
