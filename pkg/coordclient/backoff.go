package coordclient

import (
	"context"
	"errors"
	"math"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// Backoff is the wait between a node's attempts to reach the coordinator
// (its map stream, its relay): exponential from min, capped at max, each
// wait jittered over the upper half of its step, so a mesh's nodes spread
// their reconnections over [max/2, max] rather than arriving at once.
// Step the result for each wait; start again from a fresh Backoff after a
// success.
func Backoff(min, max time.Duration) wait.Backoff {
	max = maxDur(max, min)
	// wait.Jitter(d, 1) is in [d, 2d]: halve the steps and the cap.
	return wait.Backoff{Duration: min / 2, Factor: 2, Jitter: 1, Steps: math.MaxInt32, Cap: max / 2}
}

// Fixed is the wait of a caller that tries again every d, up to retries
// times: with Retry, the agent's registration while the coordinator is
// not up yet.
func Fixed(d time.Duration, retries int) wait.Backoff {
	return wait.Backoff{Duration: d, Steps: retries}
}

func maxDur(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

// Sleep waits d or until ctx is done, and returns ctx's error if it is.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Retry calls fn until it succeeds, the coordinator answers with an error
// (an *Error: trying again would get the same answer), b runs out of
// steps, or ctx is done. Before each retry it calls onRetry, if not nil,
// with the error and waits b.Step(). It returns fn's last error, or ctx's.
func Retry(ctx context.Context, b wait.Backoff, fn func(context.Context) error, onRetry func(err error, wait time.Duration)) error {
	for {
		err := fn(ctx)
		var e *Error
		if err == nil || errors.As(err, &e) || b.Steps < 1 {
			return err
		}
		d := b.Step()
		if onRetry != nil {
			onRetry(err, d)
		}
		if err := Sleep(ctx, d); err != nil {
			return err
		}
	}
}
