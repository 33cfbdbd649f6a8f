package auditlog

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// The events one Query page holds unless the caller asks for another
// number, and the most it may ask for.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
	// maxScan bounds the records one page reads, so a filter that
	// matches little cannot make one request read the whole log; the page
	// then ends early with a cursor to go on from.
	maxScan = 50_000
)

// Filter selects events. Empty fields match everything.
type Filter struct {
	Categories map[proto.AuditCategory]bool
	Codes      map[proto.AuditCode]bool
	Severities map[string]bool // "I", "W", "E"
	User       string          // the actor, case-insensitively
	Cluster    string
	Resource   string // "group/resource", or "resource" in the core group
	// Correlation is the correlation id, exactly.
	Correlation string
	From, To    time.Time
	Text        string // lower case; found in any of the event's texts
}

func splitList(v string) []string {
	var out []string
	for _, x := range strings.Split(v, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// ParseFilter reads a Filter from the query parameters of GET
// /api/v1/audit/events (proto.AuditParam*). Its errors name the bad
// parameter and the form it takes.
func ParseFilter(q map[string][]string) (Filter, error) {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return strings.Join(v, ",")
		}
		return ""
	}
	var f Filter
	if v := splitList(get(proto.AuditParamCategory)); v != nil {
		f.Categories = map[proto.AuditCategory]bool{}
		for _, c := range v {
			f.Categories[proto.AuditCategory(strings.ToLower(c))] = true
		}
	}
	if v := splitList(get(proto.AuditParamCode)); v != nil {
		f.Codes = map[proto.AuditCode]bool{}
		for _, c := range v {
			f.Codes[proto.AuditCode(strings.ToUpper(c))] = true
		}
	}
	if v := splitList(get(proto.AuditParamSeverity)); v != nil {
		f.Severities = map[string]bool{}
		for _, sv := range v {
			l := strings.ToUpper(sv[:1])
			if proto.SeverityName(l) == "" {
				return f, fmt.Errorf("severity %q: use I, W or E (info, warning, error)", sv)
			}
			f.Severities[l] = true
		}
	}
	f.User, f.Cluster, f.Resource = get(proto.AuditParamUser), get(proto.AuditParamCluster), get(proto.AuditParamResource)
	f.Text = strings.ToLower(get(proto.AuditParamSearch))
	f.Correlation = get(proto.AuditParamCorrelation)
	for k, t := range map[string]*time.Time{proto.AuditParamFrom: &f.From, proto.AuditParamTo: &f.To} {
		if v := get(k); v != "" {
			p, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return f, fmt.Errorf("%s %q: use RFC 3339, e.g. 2026-01-02T15:04:05Z", k, v)
			}
			*t = p
		}
	}
	return f, nil
}

// Match reports whether f selects e.
func (f *Filter) Match(e *proto.AuditEvent) bool {
	switch {
	case f.Categories != nil && !f.Categories[e.Category],
		f.Codes != nil && !f.Codes[e.Code],
		f.Severities != nil && !f.Severities[e.Code.Severity()],
		f.User != "" && !strings.EqualFold(f.User, e.Actor),
		f.Cluster != "" && f.Cluster != e.Cluster,
		f.Correlation != "" && f.Correlation != e.Correlation,
		!f.From.IsZero() && e.Time.Before(f.From),
		!f.To.IsZero() && !e.Time.Before(f.To):
		return false
	}
	if f.Resource != "" {
		r := e.Resource
		if r == nil {
			return false
		}
		g, res, ok := strings.Cut(f.Resource, "/")
		if !ok {
			g, res = "", f.Resource
		}
		if res != r.Resource || ok && g != r.APIGroup {
			return false
		}
	}
	if f.Text != "" {
		hay := []string{e.Actor, e.Object, e.Cluster, string(e.Error), e.Correlation, e.TraceID}
		if e.Resource != nil {
			hay = append(hay, e.Resource.Path, e.Resource.Name, e.Resource.Namespace)
		}
		for k, v := range e.Metadata {
			hay = append(hay, k+"="+v)
		}
		found := false
		for _, h := range hay {
			if strings.Contains(strings.ToLower(h), f.Text) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// ErrInvalidCursor is a page cursor this log did not hand out: the caller
// should start again without one.
var ErrInvalidCursor = errors.New("invalid cursor")

// Cursors are opaque to clients: "d<seq>" continues below seq (newest
// first), "a<seq>" continues above it (oldest first, and for following).
func encodeCursor(dir byte, seq uint64) string {
	return base64.RawURLEncoding.EncodeToString(append([]byte{dir}, strconv.FormatUint(seq, 10)...))
}

func decodeCursor(c string) (dir byte, seq uint64, err error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) < 2 || b[0] != 'a' && b[0] != 'd' {
		return 0, 0, ErrInvalidCursor
	}
	seq, err = strconv.ParseUint(string(b[1:]), 10, 64)
	if err != nil {
		return 0, 0, ErrInvalidCursor
	}
	return b[0], seq, nil
}

// Scan calls visit with each record from sequence from on (from the
// oldest kept, if from is before it), oldest first, in one view
// transaction.
func Scan(st store.Store, from uint64, visit func(proto.AuditEvent)) error {
	return st.View(func(tx store.Tx) error {
		head, anchor, err := Marks(tx)
		if err != nil {
			return err
		}
		for seq := max(from, anchor.Seq+1); seq <= head.Seq; seq++ {
			raw, err := tx.GetRaw(store.Audit, Key(seq))
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			var e proto.AuditEvent
			if err := json.Unmarshal(raw, &e); err != nil {
				return fmt.Errorf("decode audit event %d: %w", seq, err)
			}
			visit(e)
		}
		return nil
	})
}

// Query returns a page of events matching f, read from st in one view
// transaction. A cursor, if given, decides the direction; otherwise asc
// selects oldest first. Once the index covers the log (indexComplete),
// a filter on the user, the cluster, codes or categories reads only the
// index entries of that dimension, and a time range only the records of
// the hours it spans: the cost of a page follows what it returns, not the
// size of the log.
func Query(st store.Store, f *Filter, cursor string, asc bool, limit int) (proto.AuditPage, error) {
	page := proto.AuditPage{Events: []proto.AuditEvent{}}
	err := st.View(func(tx store.Tx) error {
		head, anchor, err := Marks(tx)
		if err != nil {
			return err
		}
		lo, hi := anchor.Seq+1, head.Seq // the records to look at, inclusive
		switch {
		case cursor != "":
			dir, at, err := decodeCursor(cursor)
			if err != nil {
				return err
			}
			asc = dir == 'a'
			if !asc && at == 0 {
				return nil
			}
			if asc {
				lo = max(lo, at+1)
			} else {
				hi = min(hi, at-1)
			}
		case !asc:
			page.Follow = encodeCursor('a', head.Seq)
		}
		after := lo - 1 // where an ascending page starts, before the time bound
		indexed, err := indexComplete(tx)
		if err != nil {
			return err
		}
		if indexed && (!f.From.IsZero() || !f.To.IsZero()) {
			tlo, thi, err := hourBounds(tx, f.From, f.To)
			if err != nil {
				return err
			}
			lo = max(lo, tlo)
			if !asc {
				// Not when following: a record stored later may be
				// dated in the range.
				hi = min(hi, thi)
			}
		}
		var src source = &seqRange{at: hi, lo: lo, hi: hi}
		if asc {
			src = &seqRange{at: lo, lo: lo, hi: hi, asc: true}
		}
		if prefixes, ok := f.indexPrefixes(); indexed && ok {
			src = newMerge(tx, prefixes, lo, hi, asc)
		}
		var last uint64 // the last record looked at
		exhausted := false
		for fetched, seen := 0, 0; len(page.Events) < limit && fetched < maxScan && seen < maxIndexScan; seen++ {
			c, ok, err := src.next()
			if err != nil {
				return err
			}
			if !ok {
				exhausted = true
				break
			}
			last = c.seq
			if c.timed && (!f.From.IsZero() && c.t.Before(f.From) || !f.To.IsZero() && !c.t.Before(f.To)) {
				continue
			}
			fetched++
			raw, err := tx.GetRaw(store.Audit, Key(c.seq))
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			var e proto.AuditEvent
			if err := json.Unmarshal(raw, &e); err != nil {
				return fmt.Errorf("decode audit event %d: %w", c.seq, err)
			}
			if f.Match(&e) {
				page.Events = append(page.Events, e)
			}
		}
		switch {
		case asc && exhausted:
			page.Next = encodeCursor('a', max(hi, after))
		case asc:
			page.Next = encodeCursor('a', last)
		case !exhausted:
			page.Next = encodeCursor('d', last)
		}
		return nil
	})
	return page, err
}

// maxIndexScan bounds the index entries one page reads.
const maxIndexScan = 500_000

// indexPrefixes returns the index key prefixes whose entries hold every
// record f can match, from the most selective dimension f names; ok is
// false when f names none of them.
func (f *Filter) indexPrefixes() (prefixes []string, ok bool) {
	switch {
	case f.Correlation != "":
		return []string{dimPrefix(dimCorrelation, f.Correlation)}, true
	case f.User != "":
		return []string{dimPrefix(dimUser, f.User)}, true
	case f.Cluster != "":
		return []string{dimPrefix(dimCluster, f.Cluster)}, true
	case f.Codes != nil:
		for c := range f.Codes {
			prefixes = append(prefixes, dimPrefix(dimCode, string(c)))
		}
		return prefixes, true
	case f.Categories != nil:
		for c := range f.Categories {
			prefixes = append(prefixes, dimPrefix(dimCategory, string(c)))
		}
		return prefixes, true
	}
	return nil, false
}

// hourBounds returns the lowest and highest sequence of the records dated
// in the hours that meet [from, to) (a zero bound is open); lo > hi when
// there are none.
func hourBounds(tx store.Tx, from, to time.Time) (lo, hi uint64, err error) {
	lo = math.MaxUint64
	start, end := dimHour+"/", dimHour+"0"
	if !from.IsZero() {
		start = hourKey(from)
	}
	if !to.IsZero() {
		end = hourKey(to) + "\x00"
	}
	err = tx.Scan(store.AuditIndex, start, end, false, func(k string, v []byte) error {
		h, err := time.Parse(hourLayout, strings.TrimPrefix(k, dimHour+"/"))
		if err != nil {
			return fmt.Errorf("audit index: hour entry %q: %w", k, err)
		}
		if !to.IsZero() && !h.Before(to) || !from.IsZero() && !h.Add(time.Hour).After(from) {
			return nil
		}
		span, err := parseHourSpan(v)
		if err != nil {
			return err
		}
		lo, hi = min(lo, span.lo), max(hi, span.hi)
		return nil
	})
	return lo, hi, err
}

// A candidate is a record a source offers, with its time when the
// source knows it.
type candidate struct {
	seq   uint64
	t     time.Time
	timed bool
}

// A source offers the records of [lo, hi] a page looks at, in the
// page's order.
type source interface {
	next() (candidate, bool, error)
}

// seqRange offers every record of [lo, hi], from at.
type seqRange struct {
	at, lo, hi uint64
	asc        bool
}

func (r *seqRange) next() (candidate, bool, error) {
	if r.lo > r.hi || r.at < r.lo || r.at > r.hi {
		return candidate{}, false, nil
	}
	c := candidate{seq: r.at}
	if r.asc {
		r.at++
	} else {
		r.at--
	}
	return c, true, nil
}

// indexStream offers the records of one index key prefix in [lo, hi],
// reading a page of entries at a time.
type indexStream struct {
	tx       store.Tx
	from, to string
	asc      bool
	buf      []candidate
	done     bool
}

const indexPage = 256

func (s *indexStream) peek() (candidate, bool, error) {
	if len(s.buf) == 0 && !s.done {
		var lastKey string
		err := s.tx.Scan(store.AuditIndex, s.from, s.to, !s.asc, func(k string, v []byte) error {
			if len(k) < 20 {
				return fmt.Errorf("audit index: entry %q does not end in a sequence", k)
			}
			seq, err := strconv.ParseUint(k[len(k)-20:], 10, 64)
			if err != nil {
				return fmt.Errorf("audit index: entry %q does not end in a sequence", k)
			}
			c := candidate{seq: seq}
			c.t, c.timed = parseIndexTime(v)
			s.buf = append(s.buf, c)
			lastKey = k
			if len(s.buf) == indexPage {
				return store.StopScan
			}
			return nil
		})
		if err != nil {
			return candidate{}, false, err
		}
		if len(s.buf) < indexPage {
			s.done = true
		} else if s.asc {
			s.from = lastKey + "\x00"
		} else {
			s.to = lastKey
		}
	}
	if len(s.buf) == 0 {
		return candidate{}, false, nil
	}
	return s.buf[0], true, nil
}

// merge offers the records of several index streams in order.
type merge struct {
	streams []*indexStream
	asc     bool
}

func newMerge(tx store.Tx, prefixes []string, lo, hi uint64, asc bool) *merge {
	m := &merge{asc: asc}
	if lo > hi {
		return m
	}
	for _, p := range prefixes {
		m.streams = append(m.streams, &indexStream{tx: tx, from: p + Key(lo), to: p + Key(hi) + "\x00", asc: asc})
	}
	return m
}

func (m *merge) next() (candidate, bool, error) {
	var best *indexStream
	var bc candidate
	for _, s := range m.streams {
		c, ok, err := s.peek()
		if err != nil {
			return c, false, err
		}
		if ok && (best == nil || m.asc && c.seq < bc.seq || !m.asc && c.seq > bc.seq) {
			best, bc = s, c
		}
	}
	if best == nil {
		return candidate{}, false, nil
	}
	for _, s := range m.streams { // one record is in one stream; be sure
		if c, ok, _ := s.peek(); ok && c.seq == bc.seq {
			s.buf = s.buf[1:]
		}
	}
	return bc, true, nil
}
