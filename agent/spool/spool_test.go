package spool

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

func open(t *testing.T, dir string, o Options) *Spool {
	t.Helper()
	o.Dir = dir
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// die drops s's directory lock as the kernel does when the agent is
// killed, and nothing else: no sync, no close of the segment.
func die(s *Spool) { s.lock.Close() }

func ev(actor string) proto.AuditEvent {
	return proto.AuditEvent{Code: proto.AuditRequest, Time: time.Now(), Actor: actor, Status: 200}
}

func appendN(t *testing.T, s *Spool, n int) {
	t.Helper()
	for i := range n {
		if err := s.Append(ev(strings.Repeat("u", i%7+1))); err != nil {
			t.Fatal(err)
		}
	}
}

func seqs(evs []proto.AuditEvent) []uint64 {
	var out []uint64
	for _, e := range evs {
		out = append(out, e.SourceSeq)
	}
	return out
}

func TestOrderAckAndSegments(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{SegmentEvents: 10})
	appendN(t, s, 35)
	got, err := s.Pending(100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 35 || got[0].SourceSeq != 1 || got[34].SourceSeq != 35 {
		t.Fatalf("pending = %v", seqs(got))
	}
	for i, e := range got {
		if e.SourceSeq != uint64(i+1) {
			t.Fatalf("out of order at %d: %v", i, seqs(got))
		}
	}
	if err := s.Ack(25); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Pending(5)
	if len(got) != 5 || got[0].SourceSeq != 26 {
		t.Fatalf("after ack 25, pending(5) = %v", seqs(got))
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*"))
	if len(segs) != 2 { // 21-30 and 31-35; 1-10 and 11-20 are gone
		t.Fatalf("segments after ack = %v", segs)
	}
	if s.Len() != 10 {
		t.Fatalf("Len = %d, want 10", s.Len())
	}
}

func TestResumeAfterRestart(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{SegmentEvents: 8})
	src := s.Source()
	appendN(t, s, 20)
	s.Ack(5)
	// No Close: the process died. Tear the last line as a kill mid-write
	// would.
	die(s)
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*"))
	last := segs[len(segs)-1]
	f, _ := os.OpenFile(last, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"code":"RQ001I","sou`)
	f.Close()

	s2 := open(t, dir, Options{SegmentEvents: 8})
	if s2.Source() != src {
		t.Fatalf("source changed across restart: %s → %s", src, s2.Source())
	}
	got, err := s2.Pending(100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 15 || got[0].SourceSeq != 6 || got[14].SourceSeq != 20 {
		t.Fatalf("resumed pending = %v", seqs(got))
	}
	appendN(t, s2, 1)
	got, _ = s2.Pending(100)
	if got[len(got)-1].SourceSeq != 21 {
		t.Fatalf("sequence after restart = %v", seqs(got))
	}
}

func TestBoundDropsNewAndRecordsTheGap(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	s := open(t, t.TempDir(), Options{MaxEvents: 10, Logger: log})
	appendN(t, s, 10)
	for range 5 {
		if err := s.Append(ev("late")); !errors.Is(err, ErrFull) {
			t.Fatalf("append to a full spool = %v, want ErrFull", err)
		}
	}
	mu.Lock()
	if n := strings.Count(logs.String(), "audit spool full"); n != 1 {
		t.Fatalf("warned %d times, want once:\n%s", n, logs.String())
	}
	mu.Unlock()
	got, _ := s.Pending(100)
	for _, e := range got {
		if e.Actor == "late" {
			t.Fatal("a dropped event is in the spool")
		}
	}
	s.Ack(10)
	if err := s.Append(ev("after")); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Pending(100)
	if len(got) != 2 || got[0].Code != proto.AuditEventsDropped || got[0].Metadata["dropped"] != "5" || got[1].Actor != "after" {
		t.Fatalf("after room again = %+v", got)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// fakeCoordinator stores each source's events once, like the real one.
type fakeCoordinator struct {
	mu     sync.Mutex
	acked  uint64
	stored []uint64
	down   bool
	calls  int
}

func (c *fakeCoordinator) send(_ context.Context, b proto.AuditBatch) (proto.AuditAck, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.down {
		return proto.AuditAck{}, errors.New("connection refused")
	}
	var ack proto.AuditAck
	for _, e := range b.Events {
		if e.SourceSeq <= c.acked {
			ack.Duplicates++
			continue
		}
		c.stored = append(c.stored, e.SourceSeq)
		c.acked = e.SourceSeq
		ack.Stored++
	}
	ack.Acked = c.acked
	return ack, nil
}

func (c *fakeCoordinator) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.stored)
}

// TestShipInOrderThroughOutageAndRestart runs in a synctest bubble: Ship's
// retry backoff runs on the bubble's clock, so the outage costs no real
// time and the test does not depend on the machine's speed.
func TestShipInOrderThroughOutageAndRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		c := &fakeCoordinator{down: true}
		s := open(t, dir, Options{SegmentEvents: 50})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { s.Ship(ctx, c.send, 64); close(done) }()
		appendN(t, s, 300)
		testkit.WaitFor(t, "a failed send", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.calls > 0 })
		c.mu.Lock()
		c.down = false
		c.mu.Unlock()
		testkit.WaitFor(t, "300 events", func() bool { return c.count() == 300 })
		cancel()
		<-done

		// The coordinator acknowledged, but the agent died before it wrote
		// the ack: a restarted agent resends, and nothing is stored twice.
		die(s)
		os.Remove(filepath.Join(dir, "acked"))
		s2 := open(t, dir, Options{SegmentEvents: 50})
		appendN(t, s2, 100)
		ctx2, cancel2 := context.WithCancel(context.Background())
		defer cancel2()
		go s2.Ship(ctx2, c.send, 64)
		testkit.WaitFor(t, "400 events", func() bool { return c.count() == 400 })
		testkit.WaitFor(t, "an empty spool", func() bool { return s2.Len() == 0 })
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, seq := range c.stored {
			if seq != uint64(i+1) {
				t.Fatalf("stored out of order or twice at %d: %v", i, c.stored[max(0, i-3):i+1])
			}
		}
	})
}

// TestShipGathersBursts: events appended one a millisecond, as a stream
// of requests makes them, are shipped in a few batches, not one each. It
// runs in a synctest bubble, so the gathering wait is on the bubble's
// clock and the count does not depend on the machine's speed.
func TestShipGathersBursts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := &fakeCoordinator{}
		s := open(t, t.TempDir(), Options{})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go s.Ship(ctx, c.send, 0)
		const n, every = 200, time.Millisecond
		for range n {
			appendN(t, s, 1)
			time.Sleep(every)
		}
		testkit.WaitFor(t, "every event", func() bool { return c.count() == n })
		c.mu.Lock()
		defer c.mu.Unlock()
		if most := int(n*every/ShipGather) + 1; c.calls > most {
			t.Errorf("%d events one a %v went in %d batches; want at most %d (one per %v)", n, every, c.calls, most, ShipGather)
		}
	})
}

// benchSpool opens an unbounded spool for b, closed when b ends, and
// returns it with a typical request event.
func benchSpool(b *testing.B) (*Spool, proto.AuditEvent) {
	b.Helper()
	s, err := Open(Options{Dir: b.TempDir(), MaxEvents: 1 << 30, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s, proto.AuditEvent{Code: proto.AuditRequest, Time: time.Now(), Actor: "alice@example.com", Status: 200,
		Resource: &proto.AuditResource{Verb: "list", Resource: "pods", Namespace: "default", Path: "/api/v1/namespaces/default/pods"}}
}

func BenchmarkAppend(b *testing.B) {
	s, e := benchSpool(b)
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Append(e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendWhileShipping appends while a shipper syncs and sends
// every event, as an agent does with a reachable coordinator. Append must
// not wait for the shipper's fsync.
func BenchmarkAppendWhileShipping(b *testing.B) {
	s, e := benchSpool(b)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		s.Ship(ctx, func(_ context.Context, batch proto.AuditBatch) (proto.AuditAck, error) {
			return proto.AuditAck{Acked: batch.Events[len(batch.Events)-1].SourceSeq}, nil
		}, 0)
	})
	defer wg.Wait()
	defer cancel()
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Append(e); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPendingResumesAfterAck: Pending reads on from where the last
// acknowledgement left off, across segments, after a partial
// acknowledgement, after none (a failed send), and with events appended
// in between; every event comes once, in order.
func TestPendingResumesAfterAck(t *testing.T) {
	s := open(t, t.TempDir(), Options{SegmentEvents: 3})
	appendN(t, s, 5)
	steps := []struct {
		name    string
		appendN int
		batch   int
		ackN    int // how many of the batch the coordinator acknowledges
		want    []uint64
	}{
		{"first batch, half acknowledged", 0, 4, 2, []uint64{1, 2, 3, 4}},
		{"resumes after the acknowledged", 0, 4, 0, []uint64{3, 4, 5}},
		{"a failed send gets the same again", 0, 4, 3, []uint64{3, 4, 5}},
		{"new events, across segments", 6, 4, 4, []uint64{6, 7, 8, 9}},
		{"the rest", 0, 10, 2, []uint64{10, 11}},
		{"nothing left", 0, 10, 0, nil},
	}
	for _, st := range steps {
		appendN(t, s, st.appendN)
		got, err := s.Pending(st.batch)
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if g := seqs(got); !slices.Equal(g, st.want) {
			t.Fatalf("%s: Pending = %v, want %v", st.name, g, st.want)
		}
		if st.ackN > 0 {
			if err := s.Ack(got[st.ackN-1].SourceSeq); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// BenchmarkShipOneByOne ships a full segment one event per batch: with
// Pending resuming where the acknowledgement left off, each costs the
// same however far into the segment it is.
func BenchmarkShipOneByOne(b *testing.B) {
	s, e := benchSpool(b)
	for range DefaultSegmentEvents - 1 {
		if err := s.Append(e); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		evs, err := s.Pending(1)
		if err != nil {
			b.Fatal(err)
		}
		if len(evs) == 0 {
			b.StopTimer()
			for range DefaultSegmentEvents - 1 {
				s.Append(e)
			}
			b.StartTimer()
			continue
		}
		if err := s.Ack(evs[0].SourceSeq); err != nil {
			b.Fatal(err)
		}
	}
}

func TestOneSpoolPerDirectory(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	appendN(t, s, 3)
	_, err := Open(Options{Dir: dir, Logger: slog.New(slog.DiscardHandler)})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "--audit-dir") || !strings.Contains(err.Error(), "pid ") {
		t.Fatalf("second Open = %v, want ErrLocked naming the holder and --audit-dir", err)
	}
	if s.Len() != 3 {
		t.Fatal("a refused Open disturbed the spool")
	}
	// Close releases the directory for the next agent.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, dir, Options{})
	if s2.Len() != 3 {
		t.Fatalf("after a handover Len = %d, want 3", s2.Len())
	}
}

// BenchmarkShipBatch is the spool's work for one shipment under a steady
// stream of requests: 10 events appended (about one ShipGather of the GET
// bench), read for shipping and acknowledged. cpu-ns/op is the CPU it
// takes; ns/op is mostly waiting for fsync.
func BenchmarkShipBatch(b *testing.B) {
	s, e := benchSpool(b)
	b.ReportAllocs()
	cpu0 := testkit.CPUTime()
	defer func() { b.ReportMetric(float64(testkit.CPUTime()-cpu0)/float64(b.N), "cpu-ns/op") }()
	for b.Loop() {
		for range 10 {
			if err := s.Append(e); err != nil {
				b.Fatal(err)
			}
		}
		evs, err := s.Pending(DefaultBatch)
		if err != nil || len(evs) != 10 {
			b.Fatalf("Pending: %d events, %v", len(evs), err)
		}
		if err := s.Ack(evs[len(evs)-1].SourceSeq); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPendingFromMemoryOrDisk: whether Pending serves a batch from the
// events it keeps in memory or reads the segments back (after a restart,
// or when more than maxTail events wait), the coordinator gets the same
// events, every one once and in order.
func TestPendingFromMemoryOrDisk(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{SegmentEvents: 64})
	appendN(t, s, maxTail+70) // the oldest half of them are no longer in memory
	var got []proto.AuditEvent
	ship := func(s *Spool, batch int) {
		t.Helper()
		for {
			evs, err := s.Pending(batch)
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) == 0 {
				return
			}
			got = append(got, evs...)
			if err := s.Ack(evs[len(evs)-1].SourceSeq); err != nil {
				t.Fatal(err)
			}
		}
	}
	ship(s, 50)
	appendN(t, s, 30)
	ship(s, 7)
	// A restart: nothing in memory; the acknowledgement file is lost,
	// so every spooled event goes again.
	s.Close()
	if err := os.WriteFile(filepath.Join(dir, "acked"), []byte("00000\x00\x00"), 0o600); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, dir, Options{SegmentEvents: 64})
	var again []proto.AuditEvent
	got, again = nil, got
	ship(s2, 50)
	if len(got) == 0 || got[len(got)-1].SourceSeq != uint64(maxTail+100) {
		t.Fatalf("after a lost acknowledgement, resent %v; want the last segment's events up to %d", seqs(got), maxTail+100)
	}
	// What was resent from disk is what was sent from memory.
	for _, e := range got {
		want := again[e.SourceSeq-1]
		if e.SourceSeq != want.SourceSeq || e.Actor != want.Actor || !e.Time.Equal(want.Time) {
			t.Fatalf("event %d from disk = %+v; from memory %+v", e.SourceSeq, e, want)
		}
	}
	for i, e := range again {
		if e.SourceSeq != uint64(i+1) {
			t.Fatalf("event %d has sequence %d: %v", i, e.SourceSeq, seqs(again[max(0, i-3):i+1]))
		}
	}
	if len(again) != maxTail+100 {
		t.Fatalf("shipped %d events, want %d", len(again), maxTail+100)
	}
}
