package auditexport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// CursorKey is the Meta key of a destination's cursor, an auditlog.Mark
// naming the last record the destination took.
func CursorKey(name string) string { return "audit_export/" + name }

// DefaultPoll is how often a destination that is caught up looks for new
// events, and how often the lag metrics are brought up to date.
const DefaultPoll = time.Second

// Config configures an Exporter.
type Config struct {
	Store        store.Store
	Destinations []Destination
	Logger       *slog.Logger
	// Registerer takes the exporter's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Audit records the exporter's own events (a destination failing,
	// recovering, a gap); it must not block. Nil records nothing.
	Audit func(proto.AuditEvent)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Poll replaces DefaultPoll when set (tests).
	Poll time.Duration
}

// sender delivers batches to one destination. Send returns nil only
// once the destination took every event of the batch.
type sender interface {
	Send(ctx context.Context, evs []proto.AuditEvent) error
	Close() error
}

// Exporter runs one export loop per destination. Create it with New,
// run it with Run; Hold is safe to call concurrently with Run.
type Exporter struct {
	cfg   Config
	dests []*dest
	m     *exportMetrics
}

// dest is one destination's loop state, owned by its goroutine.
type dest struct {
	Destination
	send sender
}

// New builds the senders of cfg.Destinations (their TLS settings and
// headers were read by Parse) and registers the metrics. Two
// destinations may not share a name: they would share a cursor.
func New(cfg Config) (*Exporter, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	if cfg.Audit == nil {
		cfg.Audit = func(proto.AuditEvent) {}
	}
	x := &Exporter{cfg: cfg, m: newExportMetrics(cfg.Registerer)}
	seen := map[string]bool{}
	for _, d := range cfg.Destinations {
		if seen[d.Name] {
			x.close()
			return nil, fmt.Errorf("audit export: two destinations are named %q: give one of them another name=", d.Name)
		}
		seen[d.Name] = true
		var s sender
		switch d.Kind {
		case KindSyslog:
			s = newSyslogSender(&d)
		case KindOTLP:
			o, err := newOTLPSender(&d)
			if err != nil {
				x.close()
				return nil, err
			}
			s = o
		default:
			x.close()
			return nil, fmt.Errorf("audit export %s: unknown kind %q", d.Name, d.Kind)
		}
		x.dests = append(x.dests, &dest{Destination: d, send: s})
		x.m.init(d.Name)
	}
	return x, nil
}

func (x *Exporter) close() {
	for _, d := range x.dests {
		d.send.Close()
	}
}

// Run exports until ctx is done, one goroutine per destination, and
// returns when all of them have stopped and closed their connections.
func (x *Exporter) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, d := range x.dests {
		wg.Go(func() {
			defer d.send.Close()
			x.loop(ctx, d)
		})
	}
	wg.Wait()
}

// Hold returns the highest sequence retention may prune up to: the
// lowest cursor of the configured destinations (a destination without a
// cursor yet holds everything), or math.MaxUint64 with no destination.
// Cursors only move forward, so a Hold read before pruning stays safe
// while the destinations advance.
func (x *Exporter) Hold() (uint64, error) {
	hold := uint64(math.MaxUint64)
	err := x.cfg.Store.View(func(tx store.Tx) error {
		for _, d := range x.dests {
			c, ok, err := readCursor(tx, d.Name)
			if err != nil {
				return err
			}
			if !ok {
				hold = 0
				continue
			}
			hold = min(hold, c.Seq)
		}
		return nil
	})
	return hold, err
}

func readCursor(tx store.Tx, name string) (auditlog.Mark, bool, error) {
	var m auditlog.Mark
	err := store.Get(tx, store.Meta, CursorKey(name), &m)
	if errors.Is(err, store.ErrNotFound) {
		return m, false, nil
	}
	return m, err == nil, err
}

// position is what one look at the store found for a destination.
type position struct {
	cursor auditlog.Mark
	head   uint64
	// oldest is the time of the first record after the cursor.
	oldest time.Time
	// gap, when set, is a range of records the destination will never
	// get (pruned or replaced), and reason says why.
	gapFirst, gapLast uint64
	reason            string
	events            []proto.AuditEvent
}

// read looks at the chain from d's cursor: the head, the first record
// after the cursor, and, with limit above zero, up to limit records. A
// destination without a cursor gets one (at the retention anchor for
// StartOldest, the head for StartNow). A cursor the chain no longer
// agrees with (past the head, or naming a record with another hash: the
// store was restored from a backup) starts again from the anchor; a
// cursor below the anchor (records pruned while the destination was not
// configured) goes on from the anchor. Both are reported as a gap. Only
// a new or corrected cursor is written; looking is a read transaction.
func (x *Exporter) read(d *dest, limit int) (position, error) {
	p, fix, err := x.look(d, limit)
	if err != nil || fix == nil {
		return p, err
	}
	if err := x.cfg.Store.Update(func(tx store.Tx) error {
		return store.Put(tx, store.Meta, CursorKey(d.Name), *fix)
	}); err != nil {
		return p, err
	}
	p2, _, err := x.look(d, limit)
	p2.gapFirst, p2.gapLast, p2.reason = p.gapFirst, p.gapLast, p.reason
	return p2, err
}

// look is read in one view transaction; fix is the cursor to store, if
// it must change.
func (x *Exporter) look(d *dest, limit int) (p position, fix *auditlog.Mark, err error) {
	err = x.cfg.Store.View(func(tx store.Tx) error {
		head, anchor, err := auditlog.Marks(tx)
		if err != nil {
			return err
		}
		p.head = head.Seq
		c, ok, err := readCursor(tx, d.Name)
		if err != nil {
			return err
		}
		from := auditlog.Mark{Seq: anchor.Seq, Hash: anchor.Hash}
		switch {
		case !ok && d.Start == StartNow:
			fix = &auditlog.Mark{Seq: head.Seq, Hash: head.Hash}
		case !ok:
			fix = &from
		case c.Seq > head.Seq:
			p.gapFirst, p.gapLast, p.reason = anchor.Seq+1, c.Seq, "the cursor is past the end of the chain (was the store restored from a backup?): exporting again from the oldest record kept"
			fix = &from
		case c.Seq < anchor.Seq:
			p.gapFirst, p.gapLast, p.reason = c.Seq+1, anchor.Seq, "records were pruned before this destination took them (it was not configured while retention ran)"
			fix = &from
		case c.Seq > anchor.Seq:
			e, err := getEvent(tx, c.Seq)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			if err == nil && e.Hash != c.Hash {
				p.gapFirst, p.gapLast, p.reason = anchor.Seq+1, c.Seq, "the record at the cursor has another hash than the one taken (was the store restored from a backup?): exporting again from the oldest record kept"
				fix = &from
			}
		}
		if fix != nil {
			return nil
		}
		p.cursor = c
		n := max(limit, 1)
		for seq := c.Seq + 1; seq <= head.Seq && len(p.events) < n; seq++ {
			e, err := getEvent(tx, seq)
			if errors.Is(err, store.ErrNotFound) {
				continue // pruned together with a misdated record; see auditlog.Prune
			}
			if err != nil {
				return err
			}
			p.events = append(p.events, e)
		}
		if len(p.events) > 0 {
			p.oldest = p.events[0].Time
		}
		if limit <= 0 {
			p.events = nil
		}
		return nil
	})
	return p, fix, err
}

func getEvent(tx store.Tx, seq uint64) (proto.AuditEvent, error) {
	var e proto.AuditEvent
	raw, err := tx.GetRaw(store.Audit, auditlog.Key(seq))
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal(raw, &e); err != nil {
		return e, fmt.Errorf("decode audit event %d: %w", seq, err)
	}
	return e, nil
}

// advance moves d's cursor to last, unless it moved meanwhile (another
// coordinator sharing the store exported further).
func (x *Exporter) advance(d *dest, from, last auditlog.Mark) error {
	return x.cfg.Store.Update(func(tx store.Tx) error {
		c, _, err := readCursor(tx, d.Name)
		if err != nil {
			return err
		}
		if c.Seq > from.Seq {
			return nil
		}
		return store.Put(tx, store.Meta, CursorKey(d.Name), last)
	})
}

// health is what a destination's loop remembers between attempts.
type health struct {
	backoff   *wait.Backoff
	next      time.Time // no attempt before
	failures  int       // since the last success
	failSince time.Time
	lastErr   string
}

// loop exports to d until ctx is done.
func (x *Exporter) loop(ctx context.Context, d *dest) {
	h := &health{backoff: newBackoff(d.RetryMin, d.RetryMax)}
	tick := time.NewTicker(x.cfg.Poll)
	defer tick.Stop()
	for {
		if x.step(ctx, d, h) {
			continue // a full batch went: more is waiting
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// step looks at the chain once, brings the lag metrics up to date and,
// unless d is backing off, sends it one batch. It reports whether a full
// batch was taken.
func (x *Exporter) step(ctx context.Context, d *dest, h *health) bool {
	log := x.cfg.Logger.With("destination", d.Name)
	now := x.cfg.Now()
	limit := 0
	if !now.Before(h.next) {
		limit = d.Batch
	}
	p, err := x.read(d, limit)
	if err != nil {
		log.Error("audit export: read the audit log", "err", err)
		return false
	}
	x.m.lag(d.Name, p, now)
	if p.reason != "" {
		log.Error("audit export: gap in what the destination gets", "first", p.gapFirst, "last", p.gapLast, "reason", p.reason)
		x.cfg.Audit(proto.AuditEvent{Code: proto.AuditExportGap, Actor: "system", Outcome: proto.OutcomeFailure,
			Metadata: map[string]string{"destination": d.Name, "first": strconv.FormatUint(p.gapFirst, 10),
				"last": strconv.FormatUint(p.gapLast, 10), "reason": p.reason}})
	}
	if len(p.events) == 0 {
		return false
	}
	err = x.deliver(ctx, d, p, log)
	switch {
	case ctx.Err() != nil:
		return false
	case err != nil:
		h.failures++
		x.m.failures.WithLabelValues(d.Name).Inc()
		if h.failures == 1 {
			h.failSince, h.lastErr = now, err.Error()
			log.Warn("audit export failed; retrying with back-off", "err", err)
			x.cfg.Audit(proto.AuditEvent{Code: proto.AuditExportFailing, Actor: "system", Outcome: proto.OutcomeFailure,
				Metadata: map[string]string{"destination": d.Name, "error": err.Error(),
					"pending": strconv.FormatUint(p.head-p.cursor.Seq, 10)}})
		} else if err.Error() != h.lastErr {
			h.lastErr = err.Error()
			log.Warn("audit export still failing", "err", err, "failures", h.failures)
		}
		h.next = now.Add(h.backoff.Step())
		return false
	}
	x.m.sent.WithLabelValues(d.Name).Add(float64(len(p.events)))
	x.m.lastSuccess.WithLabelValues(d.Name).Set(float64(x.cfg.Now().UnixNano()) / 1e9)
	if h.failures > 0 {
		log.Info("audit export recovered", "failures", h.failures, "since", h.failSince)
		x.cfg.Audit(proto.AuditEvent{Code: proto.AuditExportRecovered, Actor: "system",
			Metadata: map[string]string{"destination": d.Name, "failures": strconv.Itoa(h.failures),
				"since": h.failSince.UTC().Format(time.RFC3339Nano)}})
	}
	*h = health{backoff: newBackoff(d.RetryMin, d.RetryMax)}
	if len(p.events) == d.Batch {
		return true
	}
	if p2, err := x.read(d, 0); err == nil {
		x.m.lag(d.Name, p2, x.cfg.Now())
	}
	return false
}

// deliver sends p's events to d and, once d took them, moves its cursor
// to the last one. Records a receiver took but rejected are counted and
// not sent again.
func (x *Exporter) deliver(ctx context.Context, d *dest, p position, log *slog.Logger) error {
	sctx, cancel := context.WithTimeout(ctx, d.Timeout)
	err := d.send.Send(sctx, p.events)
	cancel()
	first, last := p.events[0], p.events[len(p.events)-1]
	var rej *RejectedError
	if errors.As(err, &rej) {
		log.Error("audit export: the receiver rejected records of a batch it took; they are not sent again", "err", err,
			"first", first.Seq, "last", last.Seq)
		x.m.rejected.WithLabelValues(d.Name).Inc()
		err = nil
	}
	if err != nil {
		return err
	}
	return x.advance(d, p.cursor, auditlog.Mark{Seq: last.Seq, Hash: last.Hash, Time: last.Time})
}

// newBackoff is the wait between failed attempts: from min, doubling,
// capped at max, each wait jittered up to a tenth more.
func newBackoff(min, max time.Duration) *wait.Backoff {
	return &wait.Backoff{Duration: min, Factor: 2, Jitter: 0.1, Steps: math.MaxInt32, Cap: max}
}

// exportMetrics are the exporter's Prometheus series, by destination
// name (a small set the configuration fixes).
type exportMetrics struct {
	lagEvents, lagSeconds, lastSuccess *prometheus.GaugeVec
	sent, failures, rejected           *prometheus.CounterVec
}

func newExportMetrics(reg prometheus.Registerer) *exportMetrics {
	const prefix = "clustral_coordinator_audit_export_"
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: prefix + name, Help: help}, []string{"destination"})
	}
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: prefix + name, Help: help}, []string{"destination"})
	}
	m := &exportMetrics{
		lagEvents:   gauge("lag_events", "Audit events stored but not yet taken by the destination."),
		lagSeconds:  gauge("lag_seconds", "Age of the oldest audit event the destination has not taken yet; 0 when it is caught up."),
		lastSuccess: gauge("last_success_timestamp_seconds", "When the destination last took a batch, as a Unix time; 0 if it never did since the coordinator started."),
		sent:        counter("sent_total", "Audit events the destination took (a batch sent again after a failure counts again)."),
		failures:    counter("failures_total", "Failed attempts to send a batch to the destination; each is retried with back-off."),
		rejected:    counter("rejected_batches_total", "Batches an OTLP receiver took while rejecting some of their records (partial success); those records are not sent again."),
	}
	if reg != nil {
		reg.MustRegister(m.lagEvents, m.lagSeconds, m.lastSuccess, m.sent, m.failures, m.rejected)
	}
	return m
}

// init makes every series of a destination exist from the start.
func (m *exportMetrics) init(name string) {
	m.lagEvents.WithLabelValues(name)
	m.lagSeconds.WithLabelValues(name)
	m.lastSuccess.WithLabelValues(name)
	m.sent.WithLabelValues(name)
	m.failures.WithLabelValues(name)
	m.rejected.WithLabelValues(name)
}

// lag sets the lag series of a destination from what read found.
func (m *exportMetrics) lag(name string, p position, now time.Time) {
	behind := uint64(0)
	if p.head > p.cursor.Seq {
		behind = p.head - p.cursor.Seq
	}
	m.lagEvents.WithLabelValues(name).Set(float64(behind))
	secs := 0.0
	if behind > 0 && !p.oldest.IsZero() {
		secs = max(now.Sub(p.oldest).Seconds(), 0)
	}
	m.lagSeconds.WithLabelValues(name).Set(secs)
}
