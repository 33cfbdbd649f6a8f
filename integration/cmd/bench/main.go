// Command bench measures clustral end to end and prints one line per
// number, `BENCH <name> <value> <unit>`, on standard output; progress goes
// to standard error.
//
// It measures, in one run:
//
//   - tunnel_mbps, stock_netstack_mbps, loopback_mbps: one bulk TCP
//     transfer through two wireguard-go devices on clustral's netstack,
//     on wireguard-go's stock tun/netstack, and over kernel loopback
//     (netstack/tunnelbench), with tunnel_cpu_s_per_gib and
//     tunnel_vs_stock_ratio.
//   - proxy_get_* and direct_get_*: a small GET through the mesh (the
//     kubeconfig context `clustral up` wrote: SOCKS5, WireGuard, the
//     agent's identity-aware proxy, impersonation) and straight to the
//     same kube-apiserver with the admin token, interleaved, on reused
//     keep-alive connections; proxy_overhead_p50_us is the difference.
//     proxy_overhead_vs_impersonating_p50_us and _p99_us compare with the
//     same GET straight to the apiserver impersonating the user, as the
//     agent sends it; up_cpu_us_per_get and agent_cpu_us_per_get are the
//     CPU time the `clustral up` daemon and the agent spend per GET
//     through the mesh over the timed loop. plain_proxy_* is the
//     impersonating GET through a TCP relay and a TLS-terminating
//     httputil.ReverseProxy in the bench's process (plainProxy): the two
//     hops of the mesh path without WireGuard, netstacks or the agent's
//     checks, the measured limit for the proxy overhead on this machine.
//   - exec_throughput_mbps_off and _on, recording_overhead_pct,
//     recording_bytes_per_output_byte: kubectl exec of a 64 MiB stream
//     against KWOK's exec, with session recording off and required, and
//     the recording size of a session of short lines (exec.go).
//   - up_to_first_kubectl_ms: from invoking `clustral up` with a valid
//     session until the first `kubectl get --raw /version` through the
//     mesh succeeds, median over several down/up rounds, and where that
//     time goes (up_stage_*_ms, with kubectl_direct_ms and the phases of
//     a cold GET, cold_get_*_ms; benchUp).
//   - up_rss_mib_under_load: the `clustral up` daemon's largest resident
//     set while 10 kubectl clients make 7 requests a second through it
//     (benchUpLoad).
//   - agent_rss_mib_1000_watches, agent_idle_cpu_pct_1000_watches and
//     agent_watch_revocation_ms: 100 users, each with its own `clustral
//     up`, hold 10 watches each through one agent (benchWatches).
//   - coordinator_map_delta_ms: from asking the coordinator for an
//     assignment until a GET on a new connection through the mesh first
//     succeeds (map deltas to the device and the agent, handshake, TLS);
//     revoke_to_denied_ms: from deleting it until such a GET first fails.
//   - scale_register_per_s beside store_sync_per_s_32, the bare store's
//     synced writes from as many writers, and coordinator_change_cpu_us_1k
//     and _10k, the CPU one user's assignment change costs with 1,000 and
//     10,000 map streams open (benchScale).
//   - store_write_per_s_<backend>_<writers>: acknowledged store writes a
//     second on bbolt and on a three-member etcd, with 1 and 16 writers
//     (benchStore).
//   - console_audit_page_p50_ms and _p99_ms: the console's audit page,
//     filtered by one user, loaded 100 times by a signed-in administrator
//     from a coordinator whose log holds a million records, and
//     audit_index_build_s, indexing such a log written before the index
//     existed (benchConsole).
//   - grant_first_request_max_ms and grant_rounds_over_1s: revoke/grant
//     rounds (-grant-rounds) while GETs on new connections through the
//     mesh run back to back, so the device has traffic for the agent at
//     the moment of each grant; from the grant call until the first GET
//     that succeeds has its answer.
//   - agent_restart_to_first_kubectl_ms: the agent killed with SIGKILL and
//     replaced by a new one (-agent-restarts rounds) while kubectl runs
//     back to back; from the new agent's registration until kubectl
//     first answers.
//   - revocation_after_restart_ms: the coordinator killed with SIGKILL,
//     kept down for -restart-outage (60s) and started again; from deleting
//     the user's assignment as soon as /readyz answers until the user's
//     watch through the mesh ends.
//   - ha_change_fanout_p99_ms and ha_failover_reconnect_p99_ms: -ha-devices
//     map streams over three coordinator replicas on a three-member etcd;
//     an assignment made on one replica until every stream saw it, and
//     kill -9 of a replica until its streams have a snapshot from another
//     (benchHA).
//   - live_apiserver_watches, live_agent_rss_mib_1000_viewers,
//     live_fanout_p99_ms and _p50_ms: an agent run with --live and 1,000
//     live streams of the bench user through the mesh; the watches the
//     live agent adds at the apiserver, its memory, and from a pod's
//     patch until every viewer has decoded it (benchLive).
//
// It starts etcd, kube-apiserver and Dex (integration/harness), a
// coordinator and an agent, and stops every process it started before it
// exits, also on error or SIGINT. CLUSTRAL_BIN names the clustral binary
// (make bench builds it); otherwise one is built from this checkout.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// flags tune the run; the defaults keep it to about two minutes on two
// shared cores.
type flags struct {
	transfer    int64
	transferRun int
	samples     int
	warmup      int
	upRounds    int
	deltaRounds int
	grantRounds int
	// agentRestarts is how many times benchAgentRestart replaces the agent.
	agentRestarts int
	skipTunnel    bool
	skipMesh      bool
	scaleNodes    int
	// registerConcurrency is how many device registrations benchScale
	// has in flight at once.
	registerConcurrency int
	// upLoad*: the kubectl load benchUpLoad puts through clustral up.
	upLoadClients int
	upLoadRate    float64
	upLoadTime    time.Duration
	// watchUsers and watchesPerUser: the watches benchWatches holds.
	watchUsers, watchesPerUser int
	// revocationDevices is how many simulated devices benchRevocation
	// holds connected.
	revocationDevices int
	haDevices         int
	only              string
	// restartOutage is how long benchRestart keeps the coordinator down.
	restartOutage time.Duration
}

func main() {
	var f flags
	flag.Int64Var(&f.transfer, "transfer-mib", 256, "MiB moved per tunnel transfer")
	flag.IntVar(&f.transferRun, "transfer-runs", 3, "transfers per stack (the median is reported)")
	flag.IntVar(&f.samples, "samples", 1500, "GET samples per path")
	flag.IntVar(&f.warmup, "warmup", 200, "GET warm-up requests per path")
	flag.IntVar(&f.upRounds, "up-rounds", 15, "down/up rounds for up_to_first_kubectl_ms and its stages")
	flag.IntVar(&f.deltaRounds, "delta-rounds", 5, "revoke/grant rounds for coordinator_map_delta_ms (0 skips)")
	flag.IntVar(&f.grantRounds, "grant-rounds", 1000, "revoke/grant rounds with traffic at the grant for grant_first_request_max_ms (0 skips)")
	flag.IntVar(&f.agentRestarts, "agent-restarts", 5, "agent kill/replace rounds for agent_restart_to_first_kubectl_ms (0 skips)")
	flag.DurationVar(&probeTimeout, "probe-timeout", probeTimeout, "timeout of one revoke/grant probe")
	flag.BoolVar(&f.skipTunnel, "skip-tunnel", false, "skip the tunnel throughput measurements")
	flag.BoolVar(&f.skipMesh, "skip-mesh", false, "skip everything that needs the mesh")
	flag.IntVar(&f.scaleNodes, "scale-nodes", 10000, "map streams held open for the coordinator scale measurements (0 skips)")
	flag.IntVar(&f.registerConcurrency, "register-concurrency", 32, "device registrations in flight at once for scale_register_per_s (a fleet registering after an outage)")
	flag.IntVar(&f.upLoadClients, "up-load-clients", 10, "kubectl clients for up_rss_mib_under_load")
	flag.Float64Var(&f.upLoadRate, "up-load-rate", 7, "kubectl requests a second, all clients together, for up_rss_mib_under_load")
	flag.DurationVar(&f.upLoadTime, "up-load-time", 60*time.Second, "how long the kubectl load for up_rss_mib_under_load runs (0 skips)")
	flag.IntVar(&f.watchUsers, "watch-users", 100, "users, each with its own clustral up, holding watches through one agent for agent_*_1000_watches (0 skips)")
	flag.IntVar(&f.watchesPerUser, "watches-per-user", 10, "watches each of -watch-users holds")
	flag.IntVar(&f.revocationDevices, "revocation-devices", 10000, "simulated devices connected (map streams open) while revocation_to_denied_* is measured")
	flag.IntVar(&f.haDevices, "ha-devices", 5000, "map streams spread over three coordinator replicas for the ha_* measurements (0 skips)")
	flag.DurationVar(&f.restartOutage, "restart-outage", 60*time.Second, "how long the coordinator stays down for revocation_after_restart_ms (0 skips)")
	flag.StringVar(&profileDir, "profile-dir", "", "save CPU and allocation profiles of the agent and clustral up, taken over GETs through the mesh after the GET bench's timed loop, here (see profile.go)")
	flag.IntVar(&profileSeconds, "profile-seconds", profileSeconds, "how long the -profile-dir profiles run, over GETs through the mesh after the GET bench's timed loop")
	flag.StringVar(&profileKinds, "profile-kinds", profileKinds, "what -profile-dir takes, comma-separated: cpu, allocs, trace")
	flag.StringVar(&f.only, "only", "", "run only this bench (tunnel, store, console, or a mesh one: get, exec, up, up-load, delta, grant, agent-restart, nat, watches, revocation, restart, ha, scale, live)")
	flag.Parse()
	f.transfer <<= 20
	crowdUsers = max(1, (f.revocationDevices+devicesPerUser-1)/devicesPerUser)

	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	runOrExit("bench", func(ctx context.Context) error { return run(ctx, f) })
}

// runOrExit calls run with a context that SIGINT or SIGTERM cancels and,
// if run fails, prints "what: error" on standard error and exits 1.
func runOrExit(what string, run func(context.Context) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
		os.Exit(1)
	}
}

func run(ctx context.Context, f flags) error {
	fmt.Println("# clustral bench: BENCH <name> <value> <unit>")
	fmt.Printf("# %s\n", time.Now().UTC().Format(time.RFC3339))
	if !f.skipTunnel && (f.only == "" || f.only == "tunnel") {
		if err := benchTunnel(ctx, f); err != nil {
			return err
		}
	}
	if f.only == "" || f.only == "store" {
		if err := benchStore(ctx); err != nil {
			return err
		}
	}
	if f.only == "" || f.only == "console" {
		if err := benchConsole(ctx); err != nil {
			return err
		}
	}
	if f.skipMesh || f.only == "tunnel" || f.only == "store" || f.only == "console" {
		return nil
	}
	m, err := startMesh(ctx)
	if m != nil {
		defer m.Close()
	}
	if err != nil {
		return err
	}
	for _, b := range []struct {
		name string
		run  func(context.Context, *mesh, flags) error
	}{{"get", benchGet}, {"exec", benchExec}, {"up", benchUp}, {"up-load", benchUpLoad}, {"delta", benchDelta}, {"grant", benchGrant}, {"agent-restart", benchAgentRestart}, {"nat", benchNAT}, {"watches", benchWatches}, {"revocation", benchRevocation}, {"restart", benchRestart}, {"ha", benchHA}, {"scale", benchScale}, {"live", benchLive}} {
		if f.only != "" && f.only != b.name {
			continue
		}
		if err := b.run(ctx, m, f); err != nil {
			return err
		}
	}
	return nil
}

// report prints one BENCH line.
func report(name string, v float64, unit string) {
	prec := 0
	if math.Abs(v) < 100 && v != math.Trunc(v) {
		prec = 2
	}
	fmt.Printf("BENCH %s %.*f %s\n", name, prec, v, unit)
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// percentile returns the p-th percentile (0 < p <= 100) of samples by the
// nearest-rank method. It sorts samples.
func percentile(samples []time.Duration, p float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	slices.Sort(samples)
	i := int(math.Ceil(p/100*float64(len(samples)))) - 1
	return samples[max(0, min(i, len(samples)-1))]
}

// median returns the middle of xs (the upper one of an even count),
// leaving xs as it is.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// tempDir makes the directory holding the run's clustral files.
func tempDir() (string, error) {
	d, err := os.MkdirTemp("", "clustral-bench-")
	if err != nil {
		return "", err
	}
	return filepath.Clean(d), nil
}
