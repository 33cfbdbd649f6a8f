package auditlog

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
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
	From, To   time.Time
	Text       string // lower case; found in any of the event's texts
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
// transaction. A cursor, if given,
// decides the direction; otherwise asc selects oldest first.
func Query(st store.Store, f *Filter, cursor string, asc bool, limit int) (proto.AuditPage, error) {
	page := proto.AuditPage{Events: []proto.AuditEvent{}}
	err := st.View(func(tx store.Tx) error {
		head, anchor, err := Marks(tx)
		if err != nil {
			return err
		}
		var seq uint64 // the next record to look at
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
				seq = at + 1
			} else {
				seq = at - 1
			}
		case asc:
			seq = anchor.Seq + 1
		default:
			seq = head.Seq
			page.Follow = encodeCursor('a', head.Seq)
		}
		if asc && seq <= anchor.Seq {
			seq = anchor.Seq + 1
		}
		last := seq // the last record looked at
		if asc {
			last = seq - 1
		}
		for scanned := 0; scanned < maxScan && len(page.Events) < limit; scanned++ {
			if asc && seq > head.Seq || !asc && seq <= anchor.Seq {
				break
			}
			raw, err := tx.GetRaw(store.Audit, Key(seq))
			if err == nil {
				var e proto.AuditEvent
				if err := json.Unmarshal(raw, &e); err != nil {
					return fmt.Errorf("decode audit event %d: %w", seq, err)
				}
				if f.Match(&e) {
					page.Events = append(page.Events, e)
				}
			} else if !errors.Is(err, store.ErrNotFound) {
				return err
			}
			last = seq
			if asc {
				seq++
			} else {
				seq--
			}
		}
		switch {
		case asc:
			page.Next = encodeCursor('a', last)
		case seq > anchor.Seq:
			page.Next = encodeCursor('d', last)
		}
		return nil
	})
	return page, err
}
