package main

import (
	"context"
	"fmt"
	"slices"

	"github.com/clustral/clustral/netstack/tunnelbench"
)

// benchTunnel moves f.transfer bytes f.transferRun times through each
// stack, rotating the order so background load spreads evenly, and
// reports each stack's median run.
func benchTunnel(ctx context.Context, f flags) error {
	stacks := []string{tunnelbench.Ours, tunnelbench.Stock, tunnelbench.Loopback}
	results := map[string][]tunnelbench.Result{}
	for i := range f.transferRun {
		for _, which := range stacks {
			r, err := tunnelbench.MeasureTunnel(ctx, which, f.transfer)
			if err != nil {
				return fmt.Errorf("tunnel %s: %w", which, err)
			}
			progress("tunnel %s run %d: %.1f MB/s, %.2f CPU s/GiB", which, i+1, r.MBPerSec(), r.CPUSecondsPerGiB())
			results[which] = append(results[which], r)
		}
	}
	med := map[string]tunnelbench.Result{}
	for which, rs := range results {
		slices.SortFunc(rs, func(a, b tunnelbench.Result) int {
			// Ascending throughput.
			switch x, y := a.BytesPerSec(), b.BytesPerSec(); {
			case x < y:
				return -1
			case x > y:
				return 1
			}
			return 0
		})
		med[which] = rs[len(rs)/2]
	}
	ours, stock := med[tunnelbench.Ours], med[tunnelbench.Stock]
	report("tunnel_mbps", ours.MBPerSec(), "MB/s")
	report("stock_netstack_mbps", stock.MBPerSec(), "MB/s")
	report("loopback_mbps", med[tunnelbench.Loopback].MBPerSec(), "MB/s")
	report("tunnel_vs_stock_ratio", ours.MBPerSec()/stock.MBPerSec(), "x")
	report("tunnel_cpu_s_per_gib", ours.CPUSecondsPerGiB(), "s/GiB")
	report("stock_netstack_cpu_s_per_gib", stock.CPUSecondsPerGiB(), "s/GiB")
	report("tunnel_transfer_mib", float64(f.transfer>>20), "MiB")
	return nil
}
