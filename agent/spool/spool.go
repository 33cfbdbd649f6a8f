// Package spool is the agent's audit spool: request events are written to
// local disk first, then shipped to the coordinator in order, in batches,
// and resent until the coordinator acknowledges them. Nothing is lost while
// the coordinator is unreachable or when the agent restarts: a new agent on
// the same directory resumes where the last one stopped.
//
// The directory holds:
//
//   - source: a random id made on first use. With each event's sequence
//     number it makes the event's stable identity, which the coordinator
//     uses to store each event once however often it is resent. It
//     outlives the agent's node identity, which is new on every start.
//   - seg-<first sequence>.jsonl: append-only segments, one JSON event per
//     line. A segment is removed once all its events are acknowledged.
//   - acked: the highest sequence the coordinator acknowledged, a
//     fixed-width number overwritten in place, without fsync: after a
//     node crash it may be older than the coordinator's acknowledgement,
//     or unreadable (then it counts as 0), and the events after it are
//     sent again, which the coordinator stores once.
//
// Events are written with write(2) as they come, so a killed agent loses
// none; they are fsynced before each shipment, so a node crash can lose
// only what the kernel had not yet written back and was not yet shipped.
// Shipments gather the events of ShipGather, so that cost is paid per
// batch, not per request. The events of the next shipment come from
// memory (the last maxTail written) rather than from reading the segment
// back, unless the coordinator fell that far behind.
//
// The spool is bounded (Options.MaxEvents unacknowledged events). When it
// is full it keeps what it has, the oldest events the coordinator has not
// seen, and drops new events, with a warning; once there is room again it
// first appends one event (code AG006E) that says how many were dropped
// and when, so the gap is itself in the audit log.
//
// One directory serves one agent process at a time: Open takes an
// exclusive lock (flock(2) on the file "lock", which also names the
// holder's pid) and fails with ErrLocked while another Spool holds it;
// Close releases it. The lock dies with the process, so a killed agent
// never leaves a stale one.
package spool

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/clustral/clustral/pkg/atomicfile"
	"github.com/clustral/clustral/proto"
)

// Defaults.
const (
	DefaultMaxEvents     = 100_000
	DefaultSegmentEvents = 4096
	DefaultBatch         = 500
)

// Options configure Open.
type Options struct {
	// Dir is the spool directory; it is created if missing.
	Dir string
	// MaxEvents bounds the events waiting for acknowledgement; zero means
	// DefaultMaxEvents.
	MaxEvents int
	// SegmentEvents is how many events one segment file holds; zero means
	// DefaultSegmentEvents.
	SegmentEvents int
	// Logger receives warnings; nil means slog.Default().
	Logger *slog.Logger
}

// Spool is an audit spool on disk. It is safe for concurrent use.
type Spool struct {
	dir     string
	max     int
	segSize int
	log     *slog.Logger
	source  string
	notify  chan struct{}
	lock    *os.File // holds the directory's flock until Close
	ackFile *os.File // the file "acked", open for writing until Close

	mu       sync.Mutex
	closed   bool
	segs     []uint64 // first sequence of each segment, ascending
	cur      *os.File // the last segment, open for appending
	curCount int      // events in cur
	last     uint64   // highest sequence written
	acked    uint64   // highest sequence acknowledged
	dirty    bool     // written since the last sync
	dropped  int      // events dropped since the spool filled
	dropFrom time.Time
	dropTo   time.Time

	// next is where the first unacknowledged event's line starts, when
	// known, so Pending reads from there instead of decoding the segment
	// from its start each time; shipped says where each event of the last
	// Pending ends, for Ack to move next.
	next    position
	shipped []position

	// tail holds the last events written, at most maxTail, oldest first
	// and without gaps, each with where its line ends: Pending serves a
	// batch from it when it holds the batch's first event. curOff is the
	// size of cur.
	tail   []tailEvent
	curOff int64
}

// tailEvent is an event written to the spool and where its line ends.
type tailEvent struct {
	e   proto.AuditEvent
	end position
}

// maxTail is how many of the last written events a Spool keeps in memory
// for Pending: more than a shipment gathers under a steady stream of
// requests, so that shipping does not read back what it just wrote.
const maxTail = 2 * DefaultBatch

// position is a line in a segment: the event with sequence seq, whose line
// starts at byte off of the segment that begins with sequence seg (in
// shipped: the event's line ends there).
type position struct {
	seg, seq uint64
	off      int64
}

// ErrFull is returned by Append when the spool is full and the event was
// dropped.
var ErrFull = errors.New("audit spool full")

// ErrLocked is returned (wrapped) by Open when another Spool, in this or
// another process, has the directory open.
var ErrLocked = errors.New("audit spool directory is in use")

// Open opens the spool in o.Dir, creating it on first use, and recovers
// its state: a torn last line (the process died mid-write) is cut off.
func Open(o Options) (*Spool, error) {
	if o.Dir == "" {
		return nil, errors.New("open audit spool: no directory")
	}
	if o.MaxEvents <= 0 {
		o.MaxEvents = DefaultMaxEvents
	}
	if o.SegmentEvents <= 0 {
		o.SegmentEvents = DefaultSegmentEvents
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("open audit spool: %w", err)
	}
	lock, err := lockDir(o.Dir)
	if err != nil {
		return nil, err
	}
	s := &Spool{dir: o.Dir, max: o.MaxEvents, segSize: o.SegmentEvents, log: o.Logger, notify: make(chan struct{}, 1), lock: lock}
	if s.source, err = loadSource(o.Dir); err != nil {
		lock.Close()
		return nil, err
	}
	if err := s.recover(); err != nil {
		lock.Close()
		return nil, fmt.Errorf("open audit spool %s: %w", o.Dir, err)
	}
	if s.ackFile, err = os.OpenFile(filepath.Join(o.Dir, "acked"), os.O_WRONLY|os.O_CREATE, 0o600); err != nil {
		lock.Close()
		return nil, fmt.Errorf("open audit spool: %w", err)
	}
	return s, nil
}

// lockDir takes the exclusive lock of the spool in dir, without waiting,
// and records this process's pid in the lock file for the next one's
// error message.
func lockDir(dir string) (*os.File, error) {
	p := filepath.Join(dir, "lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit spool lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			who := "another agent"
			if pid := strings.TrimSpace(string(holder)); pid != "" {
				who += " (pid " + pid + ")"
			}
			return nil, fmt.Errorf("%w: %s holds %s; give each agent its own --audit-dir", ErrLocked, who, dir)
		}
		return nil, fmt.Errorf("lock audit spool %s: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

func loadSource(dir string) (string, error) {
	p := filepath.Join(dir, "source")
	b, err := os.ReadFile(p)
	if err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read audit spool source: %w", err)
	}
	var r [16]byte
	rand.Read(r[:])
	id := hex.EncodeToString(r[:])
	if err := atomicfile.Write(p, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write audit spool source: %w", err)
	}
	return id, nil
}

func (s *Spool) segPath(first uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("seg-%020d.jsonl", first))
}

func (s *Spool) recover() error {
	if b, err := os.ReadFile(filepath.Join(s.dir, "acked")); err == nil {
		// Empty: nothing acknowledged yet, or a crash lost the write.
		if v := strings.TrimSpace(string(b)); v == "" {
			s.acked = 0
		} else if s.acked, err = strconv.ParseUint(v, 10, 64); err != nil {
			// Written without fsync, a crash can leave garbage. The
			// coordinator stores each event once, so sending them all
			// again loses nothing.
			s.log.Warn("audit spool: unreadable acknowledgement; sending the spooled events again (the coordinator keeps each once)", "file", filepath.Join(s.dir, "acked"), "err", err)
			s.acked = 0
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "seg-") || !strings.HasSuffix(name, ".jsonl") {
			continue
		}
		first, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, "seg-"), ".jsonl"), 10, 64)
		if err != nil {
			continue
		}
		s.segs = append(s.segs, first)
	}
	slices.Sort(s.segs)
	s.last = s.acked
	if n := len(s.segs); n > 0 {
		// Only the last segment can have a torn line.
		last, count, size, err := s.repairSegment(s.segs[n-1])
		if err != nil {
			return err
		}
		s.curOff = size
		if count > 0 {
			s.last = max(s.last, last)
		} else {
			s.last = max(s.last, s.segs[n-1]-1)
		}
		f, err := os.OpenFile(s.segPath(s.segs[n-1]), os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		s.cur, s.curCount = f, count
	}
	s.removeAckedLocked()
	return nil
}

// repairSegment cuts a segment after its last complete, decodable line
// and returns the sequence of that line, how many lines it keeps and its
// size.
func (s *Spool) repairSegment(first uint64) (last uint64, count int, size int64, err error) {
	p := s.segPath(first)
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, 0, 0, err
	}
	good := 0
	for off := 0; off < len(b); {
		i := bytes.IndexByte(b[off:], '\n')
		if i < 0 {
			break
		}
		var e proto.AuditEvent
		if json.Unmarshal(b[off:off+i], &e) != nil || e.SourceSeq == 0 {
			break
		}
		last, count = e.SourceSeq, count+1
		off += i + 1
		good = off
	}
	if good < len(b) {
		s.log.Warn("audit spool: cutting a torn record", "segment", filepath.Base(p), "bytes", len(b)-good)
		if err := os.Truncate(p, int64(good)); err != nil {
			return 0, 0, 0, err
		}
	}
	return last, count, int64(good), nil
}

// Source returns the spool's stable random id.
func (s *Spool) Source() string { return s.source }

// Len returns how many events wait for acknowledgement.
func (s *Spool) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.last - s.acked)
}

// Append numbers e (SourceSeq) and writes it to the spool. When the spool
// is full it drops e and returns ErrFull.
func (s *Spool) Append(e proto.AuditEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("audit spool closed")
	}
	if int(s.last-s.acked) >= s.max {
		if s.dropped == 0 {
			s.dropFrom = e.Time
			s.log.Warn("audit spool full: dropping new audit events until the coordinator acknowledges some; check that the agent reaches the coordinator, or raise --audit-spool-max-events",
				"dir", s.dir, "max_events", s.max)
		}
		s.dropped++
		s.dropTo = e.Time
		return ErrFull
	}
	if s.dropped > 0 {
		n := s.dropped
		s.dropped = 0
		gap := proto.AuditEvent{Code: proto.AuditEventsDropped, Category: proto.CategoryAgent, Time: time.Now().UTC(), Outcome: proto.OutcomeFailure,
			Metadata: map[string]string{"dropped": strconv.Itoa(n), "first": s.dropFrom.UTC().Format(time.RFC3339Nano), "last": s.dropTo.UTC().Format(time.RFC3339Nano)}}
		if err := s.writeLocked(gap); err != nil {
			return err
		}
		s.log.Warn("audit spool has room again", "dropped", n)
	}
	return s.writeLocked(e)
}

func (s *Spool) writeLocked(e proto.AuditEvent) error {
	seq := s.last + 1
	e.SourceSeq = seq
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode audit event: %w", err)
	}
	b = append(b, '\n')
	if s.cur == nil || s.curCount >= s.segSize {
		if s.cur != nil {
			s.cur.Sync()
			s.cur.Close()
		}
		f, err := os.OpenFile(s.segPath(seq), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			s.cur = nil
			return fmt.Errorf("audit spool segment: %w", err)
		}
		s.cur, s.curCount, s.curOff = f, 0, 0
		s.segs = append(s.segs, seq)
	}
	if _, err := s.cur.Write(b); err != nil {
		// The segment may now end in a partial line, so the offsets of
		// later lines are not known: Pending reads them from the file.
		s.tail = nil
		return fmt.Errorf("write audit spool: %w", err)
	}
	s.curCount++
	s.curOff += int64(len(b))
	s.last = seq
	s.dirty = true
	if len(s.tail) == maxTail {
		s.tail = slices.Delete(s.tail, 0, maxTail/2)
	}
	if len(s.tail) > 0 && s.tail[len(s.tail)-1].e.SourceSeq != seq-1 {
		s.tail = s.tail[:0]
	}
	s.tail = append(s.tail, tailEvent{e: e, end: position{seg: s.segs[len(s.segs)-1], seq: seq, off: s.curOff}})
	select {
	case s.notify <- struct{}{}:
	default:
	}
	return nil
}

// Pending returns up to n unacknowledged events, oldest first, after
// syncing them to disk.
func (s *Spool) Pending(n int) ([]proto.AuditEvent, error) {
	upTo, err := s.sync()
	if err != nil {
		return nil, err
	}
	// Read outside mu too: only Ship, which calls Pending, removes
	// segments, and Append only adds lines at the end of the last one.
	s.mu.Lock()
	from := s.acked + 1
	if from > upTo {
		s.mu.Unlock()
		return nil, nil
	}
	if out, ends := s.fromTailLocked(from, upTo, n); out != nil {
		s.shipped = ends
		s.mu.Unlock()
		return out, nil
	}
	segs := slices.Clone(s.segs)
	next := s.next
	s.mu.Unlock()
	// The segment holding from: the last one starting at or before it;
	// within it, where the last acknowledgement left off if that was from.
	i, found := slices.BinarySearch(segs, from)
	if !found {
		i--
	}
	var off int64
	if i >= 0 && next.seq == from && next.seg == segs[i] {
		off = next.off
	}
	var (
		out  []proto.AuditEvent
		ends []position
	)
	for ; i < len(segs) && len(out) < n; i++ {
		if i < 0 {
			continue
		}
		if err := s.readSegment(segs[i], off, from, upTo, n, &out, &ends); err != nil {
			return nil, err
		}
		off = 0
	}
	s.mu.Lock()
	s.shipped = ends
	s.mu.Unlock()
	return out, nil
}

// fromTailLocked returns up to n events from sequence from to upTo, and
// where their lines end, if the tail holds from; else nil.
func (s *Spool) fromTailLocked(from, upTo uint64, n int) ([]proto.AuditEvent, []position) {
	if len(s.tail) == 0 || from < s.tail[0].e.SourceSeq || from > s.tail[len(s.tail)-1].e.SourceSeq {
		return nil, nil
	}
	i := int(from - s.tail[0].e.SourceSeq)
	j := min(i+n, len(s.tail), i+int(upTo-from)+1)
	out := make([]proto.AuditEvent, 0, j-i)
	ends := make([]position, 0, j-i)
	for _, t := range s.tail[i:j] {
		out = append(out, t.e)
		ends = append(ends, t.end)
	}
	return out, ends
}

// sync makes every event written so far durable and returns the last
// sequence it covers. It syncs outside mu: an fsync takes milliseconds,
// and Append, on the proxy's request path, must not wait for it. Only
// synced events are shipped, so a node crash never loses an event the
// coordinator has seen, and sequence numbers are never reused.
func (s *Spool) sync() (uint64, error) {
	s.mu.Lock()
	f, dirty, upTo := s.cur, s.dirty, s.last
	s.dirty = false
	s.mu.Unlock()
	if !dirty || f == nil {
		return upTo, nil
	}
	// A segment rotated meanwhile was synced before it was closed.
	if err := f.Sync(); err != nil && !errors.Is(err, os.ErrClosed) {
		s.mu.Lock()
		s.dirty = true
		s.mu.Unlock()
		return 0, fmt.Errorf("sync audit spool: %w", err)
	}
	return upTo, nil
}

// readSegment appends to out, up to n in all, the events from sequence
// from to upTo of the segment that begins with sequence first, reading
// from byte off, and to ends where each of their lines ends.
func (s *Spool) readSegment(first uint64, off int64, from, upTo uint64, n int, out *[]proto.AuditEvent, ends *[]position) error {
	f, err := os.Open(s.segPath(first))
	if err != nil {
		return err
	}
	defer f.Close()
	if off > 0 {
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return err
		}
	}
	r := bufio.NewReaderSize(f, 64<<10)
	for len(*out) < n {
		line, err := r.ReadBytes('\n')
		if err == io.EOF {
			return nil // a partial line is being written; it ships next time
		}
		if err != nil {
			return err
		}
		off += int64(len(line))
		var e proto.AuditEvent
		if err := json.Unmarshal(line, &e); err != nil {
			return fmt.Errorf("audit spool %s: %w", filepath.Base(f.Name()), err)
		}
		if e.SourceSeq > upTo {
			return nil
		}
		if e.SourceSeq >= from {
			*out = append(*out, e)
			*ends = append(*ends, position{seg: first, seq: e.SourceSeq, off: off})
		}
	}
	return nil
}

// Ack records that the coordinator stored every event up to seq, and
// removes the segments that hold only such events.
func (s *Spool) Ack(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq = min(seq, s.last)
	if seq <= s.acked {
		return nil
	}
	s.acked = seq
	// One write in place, not synced: writing a new file and renaming it
	// over the old one, synced, was most of a shipment's cost, and an
	// acknowledgement lost in a crash only makes events go again (see
	// the package doc). The width is fixed, so the new number covers the
	// old one whole.
	if _, err := s.ackFile.WriteAt(fmt.Appendf(nil, "%020d\n", seq), 0); err != nil {
		return fmt.Errorf("write audit spool ack: %w", err)
	}
	i, ok := slices.BinarySearchFunc(s.tail, seq, func(t tailEvent, seq uint64) int { return cmp.Compare(t.e.SourceSeq, seq) })
	if ok {
		i++
	}
	s.tail = slices.Delete(s.tail, 0, i)
	// The next unacknowledged line starts where the acknowledged one ends.
	s.next = position{}
	if i, ok := slices.BinarySearchFunc(s.shipped, seq, func(p position, seq uint64) int { return cmp.Compare(p.seq, seq) }); ok {
		s.next = position{seg: s.shipped[i].seg, seq: seq + 1, off: s.shipped[i].off}
	}
	s.removeAckedLocked()
	return nil
}

// removeAckedLocked removes every segment but the last whose events are
// all acknowledged: those before a segment that starts at or below
// acked+1.
func (s *Spool) removeAckedLocked() {
	for len(s.segs) > 1 && s.segs[1] <= s.acked+1 {
		if err := os.Remove(s.segPath(s.segs[0])); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("audit spool: remove acknowledged segment", "err", err)
			return
		}
		s.segs = s.segs[1:]
	}
}

// ShipGather is how long Ship lets events gather after the first one
// arrives, and after a batch that was not full, before it reads and sends
// the next batch. Each batch costs an fsync of the segment, a request to
// the coordinator and an fsync of the acknowledgement; under a stream of
// requests shipping each event alone cost the agent more CPU than
// proxying the request. An event reaches the coordinator this much later.
const ShipGather = 50 * time.Millisecond

// Sender delivers a batch to the coordinator and returns its
// acknowledgement.
type Sender func(ctx context.Context, b proto.AuditBatch) (proto.AuditAck, error)

// Ship sends the spool's events with send, in order, in batches of up to
// batch events (zero means DefaultBatch), until ctx is done. A batch that
// fails is sent again, with backoff up to 5s, until acknowledged. Ship
// returns ctx's error. Run one Ship per spool. Events that come while a
// batch is out, or within ShipGather of the first, go in one batch.
func (s *Spool) Ship(ctx context.Context, send Sender, batch int) error {
	if batch <= 0 {
		batch = DefaultBatch
	}
	batch = min(batch, proto.MaxAuditBatch)
	const minBackoff, maxBackoff = 100 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	failing := false
	// gather waits ShipGather so that the events of a burst of requests
	// go in one batch.
	gather := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(ShipGather):
			return true
		}
	}
	for {
		evs, err := s.Pending(batch)
		if err != nil {
			s.log.Error("audit spool: read", "err", err)
		}
		if len(evs) == 0 || err != nil {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-s.notify:
				if !gather() {
					return ctx.Err()
				}
			case <-time.After(time.Second):
			}
			continue
		}
		ack, err := send(ctx, proto.AuditBatch{Source: s.source, Events: evs})
		if err == nil {
			err = s.Ack(ack.Acked)
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !failing {
				s.log.Warn("audit events not delivered; keeping them and retrying", "waiting", s.Len(), "err", err)
				failing = true
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		if failing {
			s.log.Info("audit events delivered again", "waiting", s.Len())
			failing = false
		}
		backoff = minBackoff
		if len(evs) < batch && !gather() {
			return ctx.Err()
		}
	}
}

// Close syncs and closes the current segment and releases the
// directory's lock. Append fails afterwards.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	defer s.lock.Close() // releases the flock
	defer s.ackFile.Close()
	if s.cur == nil {
		return nil
	}
	err := s.cur.Sync()
	if cerr := s.cur.Close(); err == nil {
		err = cerr
	}
	return err
}
