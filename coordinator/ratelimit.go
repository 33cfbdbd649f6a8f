package coordinator

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/time/rate"

	"github.com/clustral/clustral/pkg/keyrate"
	"github.com/clustral/clustral/proto"
)

// Source rate limit defaults; see Config.SourceRate.
const (
	// DefaultSourceRate is how many unauthenticated requests (logins,
	// callbacks, failed registrations) one source address may make per
	// minute, after a burst of DefaultSourceBurst.
	DefaultSourceRate  = 60
	DefaultSourceBurst = 20
	// maxSources bounds the source addresses tracked at once; beyond it
	// new sources share one bucket.
	maxSources = 100_000
)

// sourceOf is the key a request is limited by: its peer address, with an
// IPv6 address cut to its /64 (one host usually holds a whole /64).
func sourceOf(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// newSourceLimiters returns the per-source limiters Config describes, or
// nil when limiting is off.
func newSourceLimiters(cfg Config) *keyrate.Limiters[netip.Addr] {
	if cfg.SourceRate < 0 {
		return nil
	}
	return keyrate.New[netip.Addr](rate.Limit(float64(cfg.SourceRate)/60), cfg.SourceBurst, maxSources)
}

// writeRateLimited answers 429 with Retry-After.
func (s *Server) writeRateLimited(w http.ResponseWriter, route string, wait time.Duration) {
	secs := keyrate.RetryAfter(wait)
	s.metrics.refused.WithLabelValues(route).Inc()
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	writeProblem(w, http.StatusTooManyRequests, proto.CodeRateLimited,
		fmt.Sprintf("too many unauthenticated requests from your address (limit %d a minute, bursts of %d)", s.cfg.SourceRate, s.cfg.SourceBurst),
		fmt.Sprintf("retry in %d s", secs))
}

// perSource wraps an unauthenticated route: each request takes a token of
// its source address, and a source without one is answered 429.
func (s *Server) perSource(route string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.sources != nil {
			if wait, ok := s.sources.Take(sourceOf(r), s.now()); !ok {
				s.writeRateLimited(w, route, wait)
				return
			}
		}
		h(w, r)
	}
}

// sourceReady answers 429 and returns false when the request's source has
// used up its tokens on failed attempts; a route whose credential is
// checked later calls it first, and sourceFailed when the credential is
// refused, so only failures cost tokens.
func (s *Server) sourceReady(w http.ResponseWriter, r *http.Request, route string) bool {
	if s.sources == nil {
		return true
	}
	if wait, ok := s.sources.Ready(sourceOf(r), s.now()); !ok {
		s.writeRateLimited(w, route, wait)
		return false
	}
	return true
}

// sourceFailed takes a token of the request's source for a refused
// credential.
func (s *Server) sourceFailed(r *http.Request) {
	if s.sources != nil {
		s.sources.Take(sourceOf(r), s.now())
	}
}
