package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"time"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/integration/nat"
)

// The NAT measurements run in the topology of integration/nat: the laptop
// and the cluster each behind its own masquerading router, the
// coordinator on the "internet" between them (network namespaces; root
// and nftables only). One transfer is a `kubectl get --raw` of natObjects
// ConfigMaps of natObjectSize random bytes, uncompressed (about 42 MiB of
// JSON), from the agent to the laptop:
//
//   - nat_up_to_first_kubectl_ms: from invoking `clustral up` until a
//     `kubectl get --raw /version` through the mesh has answered; the
//     relay carries it while the direct path is being found.
//   - time_to_direct_ms: from invoking `clustral up` until both ends use
//     the direct path: `clustral status` says so and the agent has logged
//     it (polled every 200 ms, each poll a `clustral status` run).
//   - direct_mbps: the transfer over the direct UDP path.
//   - relay_mbps: the same transfer with the laptop's router dropping all
//     UDP, so WireGuard travels through the coordinator's relay, at the
//     coordinator's default --relay-rate (64 MiB/s per node).
//   - relay_vs_direct_ratio: relay_mbps / direct_mbps (goal: 0.8 or more).
//
// Each rate is the median of -transfer-runs transfers, each timed from
// starting kubectl until it exits, after one untimed transfer on the same
// path; two LISTs straight to the apiserver come before them all.
const (
	natObjects    = 32
	natObjectSize = 1000 << 10
)

// init runs the measurement instead of main when this program was
// re-executed inside a topology by benchNAT.
func init() {
	topo, ok := nat.FromEnv()
	if !ok {
		return
	}
	runOrExit("bench: nat", func(ctx context.Context) error { return natInner(ctx, topo) })
	os.Exit(0)
}

// benchNAT builds the topology and runs this program again inside its
// core namespace, passing its BENCH lines on. Without root or nftables it
// says so on standard error and measures nothing.
func benchNAT(ctx context.Context, _ *mesh, f flags) error {
	if err := nat.Supported(); err != nil {
		progress("nat: skipped: %v", err)
		return nil
	}
	dir, bin, err := harness.TempClustral("clustral-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	progress("nat: building the NAT topology")
	topo, err := nat.NewTopology()
	if err != nil {
		return err
	}
	defer func() {
		if err := topo.Close(); err != nil {
			progress("nat: %v", err)
		}
	}()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", topo.Core, self)
	cmd.Env = append(os.Environ(), topo.Environ(), "CLUSTRAL_BIN="+bin, fmt.Sprintf("CLUSTRAL_BENCH_NAT_RUNS=%d", f.transferRun))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	harness.KillGroupWith(cmd)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nat: %w", err)
	}
	return nil
}

// natInner runs in the topology's core namespace.
func natInner(ctx context.Context, topo *nat.Topology) error {
	runs := 3
	fmt.Sscan(os.Getenv("CLUSTRAL_BENCH_NAT_RUNS"), &runs)
	runs = max(runs, 1)
	dir, err := tempDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	progress("nat: starting the mesh across the NATs")
	sctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	m, err := nat.StartMesh(sctx, topo, os.Getenv("CLUSTRAL_BIN"), dir)
	if err != nil {
		return err
	}
	defer m.Close()
	progress("nat: creating %d ConfigMaps of %d KiB", natObjects, natObjectSize>>10)
	if err := nat.CreateBulk(sctx, m.Env.APIServer.Client(), natObjects, natObjectSize); err != nil {
		return err
	}

	start := time.Now()
	if err := m.Up(ctx); err != nil {
		return err
	}
	// The first kubectl behind the two NATs, before any direct path:
	// it is carried by the relay.
	if out, err := m.Kubectl(ctx, "get", "--raw", "/version").CombinedOutput(); err != nil {
		return fmt.Errorf("first kubectl behind NAT: %w\n%s", err, out)
	}
	report("nat_up_to_first_kubectl_ms", ms(time.Since(start)), "ms")
	if err := m.WaitPath(ctx, "direct", time.Minute); err != nil {
		return err
	}
	report("time_to_direct_ms", ms(time.Since(start)), "ms")

	// The first LISTs of the ConfigMaps are slower in the apiserver
	// whatever the path; two straight to it come before any timed one.
	for range 2 {
		if _, err := m.Env.APIServer.Client().CoreV1().RESTClient().Get().AbsPath(nat.BulkPath).DoRaw(ctx); err != nil {
			return fmt.Errorf("warm-up LIST: %w", err)
		}
	}
	direct, err := natTransfer(ctx, m, runs, false)
	if err != nil {
		return fmt.Errorf("direct: %w", err)
	}
	if err := topo.BlockUDP(topo.LaptopRouter); err != nil {
		return err
	}
	if err := m.WaitPath(ctx, "relayed", time.Minute); err != nil {
		return err
	}
	relayed, err := natTransfer(ctx, m, runs, true)
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	report("direct_mbps", direct, "Mbit/s")
	report("relay_mbps", relayed, "Mbit/s")
	report("relay_vs_direct_ratio", relayed/direct, "x")
	return nil
}

// natTransfer returns the median rate in Mbit/s of runs transfers, and
// fails if the relay did not carry them (viaRelay) or did (!viaRelay).
func natTransfer(ctx context.Context, m *nat.Mesh, runs int, viaRelay bool) (float64, error) {
	before, err := m.RelayStats(ctx)
	if err != nil {
		return 0, err
	}
	// One untimed transfer first: the first through a path runs slower
	// (the nodes' heaps and TCP buffers grow to it), and both paths are
	// measured as they run once in use.
	var rates []float64
	var total int
	for i := range runs + 1 {
		cmd := m.Kubectl(ctx, "--disable-compression", "get", "--raw", nat.BulkPath)
		t0 := time.Now()
		out, err := cmd.Output()
		d := time.Since(t0)
		if err != nil {
			return 0, fmt.Errorf("kubectl get --raw: %w", err)
		}
		if len(out) < natObjects*natObjectSize {
			return 0, fmt.Errorf("kubectl got %d bytes, want more than %d", len(out), natObjects*natObjectSize)
		}
		total += len(out)
		if i > 0 {
			rates = append(rates, float64(len(out))*8/d.Seconds()/1e6)
		}
	}
	after, err := m.RelayStats(ctx)
	if err != nil {
		return 0, err
	}
	relayed := after.Bytes - before.Bytes
	progress("nat: relay=%v: %.0f Mbit/s per run; the relay forwarded %d bytes, dropped %d datagrams over the rate and %d on full queues",
		viaRelay, rates, relayed, after.DroppedRate-before.DroppedRate, after.DroppedQueue-before.DroppedQueue)
	switch {
	case viaRelay && relayed < uint64(total):
		return 0, fmt.Errorf("the relay forwarded only %d bytes of %d", relayed, total)
	case !viaRelay && relayed > uint64(total)/100:
		return 0, fmt.Errorf("the relay forwarded %d bytes of a direct transfer of %d", relayed, total)
	}
	slices.Sort(rates)
	return rates[len(rates)/2], nil
}
