package coordinator

import (
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/clustral/clustral/proto"
)

// Failed unauthenticated attempts (refused logins, ID tokens and
// registrations) are aggregated in the audit log: the first failure of a
// kind from one source is stored at once, with its reason; the ones that
// follow within failureWindow are counted and stored as one event with the
// count when the window closes. A flood of failures thus costs one event a
// minute per source and kind, not one each, yet none goes uncounted.

const (
	// failureWindow is how long failures of one kind from one source are
	// counted before their count is stored.
	failureWindow = time.Minute
	// maxFailureKeys bounds the (kind, source, actor) triples counted at
	// once; beyond it failures are counted under one key per kind.
	maxFailureKeys = 10_000
)

type failureKey struct {
	code   proto.AuditCode
	source netip.Addr // zero: the overflow key
	actor  string
}

type failureCount struct {
	count       int // after the first, which was stored at once
	first, last time.Time
	reason      string
}

// failures counts failed attempts per key. Its zero value is ready; it is
// safe for concurrent use.
type failures struct {
	mu sync.Mutex
	m  map[failureKey]*failureCount
}

// auditFailure records a refused login or registration. who is whatever
// identifies the caller, if anything does.
func (s *Server) auditFailure(code proto.AuditCode, r *http.Request, who string, err error) {
	if who == "" {
		who = "anonymous"
	}
	now := s.now()
	k := failureKey{code: code, source: sourceOf(r), actor: who}
	f := &s.failures
	f.mu.Lock()
	if f.m == nil {
		f.m = map[failureKey]*failureCount{}
	}
	if f.m[k] == nil && len(f.m) >= maxFailureKeys {
		k = failureKey{code: code, actor: "*"}
	}
	c := f.m[k]
	if c != nil {
		c.count++
		c.last, c.reason = now, err.Error()
		f.mu.Unlock()
		return
	}
	f.m[k] = &failureCount{first: now, last: now}
	f.mu.Unlock()
	s.audit(proto.AuditEvent{Code: code, Time: now, Actor: who, Outcome: proto.OutcomeFailure,
		Metadata: map[string]string{"reason": err.Error(), "remote": r.RemoteAddr}})
}

// flushFailures stores the counts of the windows that closed by now, and
// forgets them.
func (s *Server) flushFailures(now time.Time) {
	f := &s.failures
	var evs []proto.AuditEvent
	f.mu.Lock()
	for k, c := range f.m {
		if now.Sub(c.first) < failureWindow {
			continue
		}
		delete(f.m, k)
		if c.count == 0 {
			continue
		}
		remote := "many sources"
		if k.source.IsValid() {
			remote = k.source.String()
		}
		evs = append(evs, proto.AuditEvent{Code: k.code, Time: c.last, Actor: k.actor, Outcome: proto.OutcomeFailure,
			Metadata: map[string]string{"reason": c.reason, "remote": remote, "count": strconv.Itoa(c.count),
				"first": c.first.UTC().Format(time.RFC3339Nano), "last": c.last.UTC().Format(time.RFC3339Nano)}})
	}
	f.mu.Unlock()
	for _, e := range evs {
		s.audit(e)
	}
}
