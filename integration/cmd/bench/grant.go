package main

import (
	"context"
	"fmt"
	"time"
)

// benchGrant revokes and grants the user's assignment f.grantRounds times
// while a client keeps sending GETs on new connections through the mesh,
// so the device has traffic for the agent at the very moment both learn
// of each other again, and each first handshake can cross the agent's.
// It times from the grant call until the first GET that succeeds has its
// answer, and reports the worst round and how many took over a second.
func benchGrant(ctx context.Context, m *mesh, f flags) error {
	if f.grantRounds <= 0 {
		return nil
	}
	probe, err := getProbe(ctx, m, true)
	if err != nil {
		return err
	}
	// until probes back to back from now until ok(probe()), and returns
	// when the deciding probe ended.
	until := func(ok func(error) bool) (time.Time, error) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := probe()
			if ok(err) {
				return time.Now(), nil
			}
			if ctx.Err() != nil {
				return time.Time{}, ctx.Err()
			}
			if time.Now().After(deadline) {
				return time.Time{}, fmt.Errorf("timed out; last probe: %v", err)
			}
		}
	}
	if _, err := until(func(err error) bool { return err == nil }); err != nil {
		return fmt.Errorf("probe before revoking: %w", err)
	}
	progress("%d revoke/grant rounds with traffic at the grant", f.grantRounds)
	samples := make([]time.Duration, 0, f.grantRounds)
	over := 0
	for i := range f.grantRounds {
		if err := m.revoke(ctx); err != nil {
			return err
		}
		if _, err := until(func(err error) bool { return err != nil }); err != nil {
			return fmt.Errorf("round %d: waiting for the refusal: %w", i+1, err)
		}
		// The probes run from before the grant is asked for until one
		// succeeds: the device sends as soon as its map lets it.
		granted := make(chan error, 1)
		start := time.Now()
		go func() { granted <- m.grant(ctx) }()
		end, err := until(func(err error) bool { return err == nil })
		if gerr := <-granted; gerr != nil {
			return fmt.Errorf("round %d: grant: %w", i+1, gerr)
		}
		if err != nil {
			return fmt.Errorf("round %d: waiting for the first answer: %w", i+1, err)
		}
		d := end.Sub(start)
		samples = append(samples, d)
		if d > time.Second {
			over++
			progress("round %d: first answer %v after the grant", i+1, d.Round(time.Millisecond))
		}
	}
	report("grant_first_request_p50_ms", ms(percentile(samples, 50)), "ms")
	report("grant_first_request_max_ms", ms(percentile(samples, 100)), "ms")
	report("grant_rounds_over_1s", float64(over), "rounds")
	report("grant_rounds", float64(len(samples)), "rounds")
	return nil
}
