package agent

import (
	"net/http"
	"time"

	"golang.org/x/time/rate"

	"github.com/clustral/clustral/pkg/keyrate"
	"github.com/clustral/clustral/proto"
)

// Default per-user rate limits of a Proxy.
const (
	DefaultRateLimit rate.Limit = 100
	DefaultRateBurst            = 200
)

// limiters is a token bucket per user (pkg/keyrate). It is safe for
// concurrent use.
//
// A user's bucket is dropped once it has been idle long enough to be full
// again, since a full bucket is what a new user gets: evicting loses
// nothing, and the map holds only users active in the last burst/limit
// seconds.
type limiters struct {
	limit rate.Limit
	burst int
	users *keyrate.Limiters[string]
}

// newLimiters returns per-user limiters as ProxyConfig describes them, or nil
// when limiting is off.
func newLimiters(limit rate.Limit, burst int) *limiters {
	if limit == 0 {
		limit = DefaultRateLimit
	}
	if burst == 0 {
		burst = DefaultRateBurst
	}
	if limit < 0 || burst < 0 || limit == rate.Inf {
		return nil
	}
	return &limiters{limit: limit, burst: burst, users: keyrate.New[string](limit, burst, 0)}
}

// take takes a token for user at now. If the bucket is empty it takes
// none and returns how long until one is there.
func (l *limiters) take(user string, now time.Time) (wait time.Duration, ok bool) {
	return l.users.Take(user, now)
}

// evict drops the buckets that are full again at now.
func (l *limiters) evict(now time.Time) { l.users.Evict(now) }

func (l *limiters) len() int { return l.users.Len() }

// rateLimited is the answer to a user over their limit.
func (p *Proxy) rateLimited(user string, wait time.Duration) *denial {
	secs := keyrate.RetryAfter(wait)
	d := deny(http.StatusTooManyRequests, proto.CodeRateLimited,
		"%s is sending requests to cluster '%s' faster than its limit of %g per second (bursts of %d). Slow down, and retry in %d s.",
		user, p.cluster, float64(p.limits.limit), p.limits.burst, secs)
	d.retryAfter = secs
	return d
}
