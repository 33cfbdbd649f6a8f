// Package keyrate keeps a token bucket (golang.org/x/time/rate) per key:
// per source address, per user. A bucket is dropped once it has been idle
// long enough to be full again, since a full bucket is what a new key
// gets: dropping it loses nothing. The number of buckets is bounded; keys
// beyond the bound share one overflow bucket, so a flood from many keys
// costs bounded memory and is limited as a whole.
package keyrate

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiters is a token bucket per key. It is safe for concurrent use.
type Limiters[K comparable] struct {
	limit   rate.Limit
	burst   int
	full    time.Duration // how long an empty bucket takes to fill
	maxKeys int

	mu       sync.Mutex
	buckets  map[K]*bucket
	overflow bucket
	lastPass time.Time // of the last eviction pass
}

type bucket struct {
	lim  *rate.Limiter
	last time.Time // of the last token taken
}

// New returns limiters of limit tokens per second with bursts of burst,
// holding at most maxKeys buckets (0: unbounded). limit and burst must be
// positive.
func New[K comparable](limit rate.Limit, burst, maxKeys int) *Limiters[K] {
	return &Limiters[K]{
		limit:    limit,
		burst:    burst,
		full:     time.Duration(float64(burst) / float64(limit) * float64(time.Second)),
		maxKeys:  maxKeys,
		buckets:  make(map[K]*bucket),
		overflow: bucket{lim: rate.NewLimiter(limit, burst)},
	}
}

// Limit and Burst return the configured rate and burst.
func (l *Limiters[K]) Limit() rate.Limit { return l.limit }
func (l *Limiters[K]) Burst() int        { return l.burst }

// bucketLocked returns key's bucket, creating it if there is room.
func (l *Limiters[K]) bucketLocked(key K, now time.Time) *bucket {
	if b := l.buckets[key]; b != nil {
		return b
	}
	if l.maxKeys > 0 && len(l.buckets) >= l.maxKeys {
		// At most one pass per fill time: a pass frees every bucket that
		// could be freed until then.
		if now.Sub(l.lastPass) >= l.full {
			l.evictLocked(now)
			l.lastPass = now
		}
		if len(l.buckets) >= l.maxKeys {
			return &l.overflow
		}
	}
	b := &bucket{lim: rate.NewLimiter(l.limit, l.burst)}
	l.buckets[key] = b
	return b
}

// Take takes a token for key at now. If the bucket is empty it takes none
// and returns how long until one is there.
func (l *Limiters[K]) Take(key K, now time.Time) (wait time.Duration, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucketLocked(key, now)
	r := b.lim.ReserveN(now, 1)
	if !r.OK() {
		return time.Duration(math.MaxInt64), false
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, false
	}
	b.last = now
	return 0, true
}

// Ready reports whether key has a token at now without taking it, and if
// not, how long until it has.
func (l *Limiters[K]) Ready(key K, now time.Time) (wait time.Duration, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if l.maxKeys == 0 || len(l.buckets) < l.maxKeys {
			return 0, true // a new bucket is full
		}
		b = &l.overflow
	}
	tokens := b.lim.TokensAt(now)
	if tokens >= 1 {
		return 0, true
	}
	return time.Duration((1 - tokens) / float64(l.limit) * float64(time.Second)), false
}

// Evict drops the buckets that are full again at now.
func (l *Limiters[K]) Evict(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evictLocked(now)
}

func (l *Limiters[K]) evictLocked(now time.Time) {
	for k, b := range l.buckets {
		if now.Sub(b.last) >= l.full {
			delete(l.buckets, k)
		}
	}
}

// Len returns the number of buckets held (the overflow bucket not
// counted).
func (l *Limiters[K]) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// RetryAfter is wait in whole seconds for a Retry-After header: at least
// one.
func RetryAfter(wait time.Duration) int {
	if wait <= 0 || wait > 24*time.Hour {
		return max(1, int(min(wait, 24*time.Hour)/time.Second))
	}
	return int(math.Ceil(wait.Seconds()))
}
