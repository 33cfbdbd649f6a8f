package agent

import (
	"math"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/clustral/clustral/proto"
)

// Default per-user rate limits of a Proxy.
const (
	DefaultRateLimit rate.Limit = 100
	DefaultRateBurst            = 200
)

// limiters is a token bucket per user. It is safe for concurrent use.
//
// A user's bucket is dropped once it has been idle long enough to be full
// again, since a full bucket is what a new user gets: evicting loses
// nothing, and the map holds only users active in the last burst/limit
// seconds.
type limiters struct {
	limit rate.Limit
	burst int
	full  time.Duration // how long an empty bucket takes to fill

	mu    sync.Mutex
	users map[string]*userLimiter
}

type userLimiter struct {
	lim  *rate.Limiter
	last time.Time // of the last token taken
}

// newLimiters returns per-user limiters as Config describes them, or nil
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
	return &limiters{
		limit: limit,
		burst: burst,
		full:  time.Duration(float64(burst) / float64(limit) * float64(time.Second)),
		users: make(map[string]*userLimiter),
	}
}

// take takes a token for user at now. If the bucket is empty it takes
// none and returns how long until one is there.
func (l *limiters) take(user string, now time.Time) (wait time.Duration, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.users[user]
	if u == nil {
		u = &userLimiter{lim: rate.NewLimiter(l.limit, l.burst)}
		l.users[user] = u
	}
	r := u.lim.ReserveN(now, 1)
	if !r.OK() {
		return time.Duration(math.MaxInt64), false
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, false
	}
	u.last = now
	return 0, true
}

// evict drops the buckets that are full again at now.
func (l *limiters) evict(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for name, u := range l.users {
		if now.Sub(u.last) >= l.full {
			delete(l.users, name)
		}
	}
}

func (l *limiters) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.users)
}

// rateLimited is the answer to a user over their limit.
func (p *Proxy) rateLimited(user string, wait time.Duration) *denial {
	secs := int(math.Ceil(wait.Seconds()))
	if secs < 1 || wait < 0 {
		secs = 1
	}
	d := deny(http.StatusTooManyRequests, proto.CodeRateLimited,
		"%s is sending requests to cluster '%s' faster than its limit of %g per second (bursts of %d). Slow down, and retry in %d s.",
		user, p.cluster, float64(p.limits.limit), p.limits.burst, secs)
	d.retryAfter = secs
	return d
}
