package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
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
//     UDP, so WireGuard travels through the coordinator's relay, with its
//     per-node rate cap lifted (natRelayRate).
//   - relay_vs_direct_ratio: the median over the pairs of relayed rate /
//     direct rate (goal: 0.8 or more).
//
// The transfers come in pairs, a direct one and then a relayed one (see
// natPairs), -transfer-runs pairs but at least minNATPairs; direct_mbps
// and relay_mbps are the medians of each path's rates. Each transfer is
// timed from starting kubectl until it exits; each path carries one
// untimed transfer before its first timed one, and two LISTs straight to
// the apiserver come before them all.
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
	// The relay's own throughput is measured, not its per-node cap: see
	// natRelayRate.
	m, err := nat.StartMesh(sctx, topo, os.Getenv("CLUSTRAL_BIN"), dir, "--relay-rate", strconv.Itoa(natRelayRate))
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
	pairs, err := natPairs(ctx, topo, m, max(runs, minNATPairs))
	if err != nil {
		return err
	}
	var direct, relayed, ratios []float64
	for _, p := range pairs {
		direct = append(direct, p.direct)
		relayed = append(relayed, p.relayed)
		ratios = append(ratios, p.relayed/p.direct)
	}
	progress("nat: direct %.0f Mbit/s, relayed %.0f Mbit/s, relayed/direct %.2f per pair", direct, relayed, ratios)
	report("direct_mbps", median(direct), "Mbit/s")
	report("relay_mbps", median(relayed), "Mbit/s")
	report("relay_vs_direct_ratio", median(ratios), "x")
	return nil
}

// natRelayRate is the coordinator's --relay-rate in the NAT bench, in
// bytes per second: far above what this machine can relay, so that
// relay_mbps measures the relay's throughput. The default cap, 64 MiB/s
// per node, bounds a relayed transfer at about 506 Mbit/s (1,368 bytes of
// TCP payload per 1,452-byte WireGuard datagram), below a fast run's
// direct rate; how fast a relayed node may go is the operator's choice.
const natRelayRate = 1 << 30

// minNATPairs is the fewest direct/relayed pairs the NAT bench times,
// whatever -transfer-runs says: its ratio is a goal, and the machine's
// speed drifts between pairs.
const minNATPairs = 5

// natPair is one direct transfer and the relayed one right after it, in
// Mbit/s.
type natPair struct{ direct, relayed float64 }

// natPairs times n pairs of transfers, a direct one and then a relayed
// one, switching the path between them: the laptop's router drops UDP
// for the relayed transfer and passes it again for the next direct one.
// Alternating keeps both rates of a pair on the same machine, whose speed
// drifts over the minute the transfers take; timing all direct transfers
// first and all relayed ones after gave the same build ratios from 0.54
// to 0.95. Each path carries one untimed transfer before its first timed
// one. The path is direct when natPairs is called, and relayed when it
// returns.
func natPairs(ctx context.Context, topo *nat.Topology, m *nat.Mesh, n int) ([]natPair, error) {
	pairs := make([]natPair, n)
	for i := range pairs {
		if i > 0 {
			if err := topo.UnblockUDP(topo.LaptopRouter); err != nil {
				return nil, err
			}
			if err := m.WaitPath(ctx, "direct", time.Minute); err != nil {
				return nil, err
			}
		}
		var err error
		if pairs[i].direct, err = natTransfer(ctx, m, i == 0, false); err != nil {
			return nil, fmt.Errorf("direct: %w", err)
		}
		if err := topo.BlockUDP(topo.LaptopRouter); err != nil {
			return nil, err
		}
		if err := m.WaitPath(ctx, "relayed", time.Minute); err != nil {
			return nil, err
		}
		if pairs[i].relayed, err = natTransfer(ctx, m, i == 0, true); err != nil {
			return nil, fmt.Errorf("relay: %w", err)
		}
	}
	return pairs, nil
}

// natTransfer returns the rate in Mbit/s of one transfer, after an
// untimed one when warm is set, and fails if the relay did not carry them
// (viaRelay) or did (!viaRelay).
func natTransfer(ctx context.Context, m *nat.Mesh, warm, viaRelay bool) (float64, error) {
	before, err := m.RelayStats(ctx)
	if err != nil {
		return 0, err
	}
	// The first transfer through a path runs slower (the nodes' heaps
	// and TCP buffers grow to it), so each path is warmed once, untimed.
	tries := 1
	if warm {
		tries = 2
	}
	var rate float64
	var total int
	for range tries {
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
		rate = float64(len(out)) * 8 / d.Seconds() / 1e6
	}
	after, err := m.RelayStats(ctx)
	if err != nil {
		return 0, err
	}
	relayed := after.Bytes - before.Bytes
	if dr, dq := after.DroppedRate-before.DroppedRate, after.DroppedQueue-before.DroppedQueue; dr+dq > 0 {
		progress("nat: relay=%v: the relay dropped %d datagrams over the rate and %d on full queues", viaRelay, dr, dq)
	}
	switch {
	case viaRelay && relayed < uint64(total):
		return 0, fmt.Errorf("the relay forwarded only %d bytes of %d", relayed, total)
	case !viaRelay && relayed > uint64(total)/100:
		return 0, fmt.Errorf("the relay forwarded %d bytes of a direct transfer of %d", relayed, total)
	}
	return rate, nil
}
