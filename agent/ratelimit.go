package agent

import "golang.org/x/time/rate"

// Default per-user rate limits of a Proxy.
const (
	DefaultRateLimit rate.Limit = 100
	DefaultRateBurst            = 200
)
