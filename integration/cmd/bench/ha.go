package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// haReplicas is how many coordinator replicas benchHA runs.
const haReplicas = 3

// benchHA measures coordinator replicas on a three-member etcd
// (docs/design.md, "Replicas on one etcd"): f.haDevices simulated
// devices of the bench user, stream i registered at and streaming from
// replica i%3, each given every replica's URL.
//
//   - ha_change_fanout_p99_ms: over scaleRounds rounds, an assignment
//     made on the first replica gives the user a cluster whose agent is
//     registered; the time from the request until each stream has seen
//     the agent as a peer, p99 over every stream of every round.
//   - ha_failover_reconnect_p99_ms: the last replica is killed with
//     SIGKILL; the time until each of its streams has a snapshot from
//     another replica (the simulated devices reopen at the next URL at
//     once, so this is the survivors' part of a failover, without a
//     client's back-off).
func benchHA(ctx context.Context, m *mesh, f flags) error {
	n := f.haDevices
	if n <= 0 {
		return nil
	}
	dir := filepath.Join(m.dir, "ha")
	progress("starting a three-member etcd and %d coordinator replicas", haReplicas)
	// The replicas share one public URL, the first's, as behind a load
	// balancer: sessions name it as their issuer.
	port, err := harness.FreePort()
	if err != nil {
		return err
	}
	r, err := harness.StartReplicas(ctx, m.bin, dir, haReplicas, harness.CoordinatorOptions{
		Port: port, Dex: m.env.Dex, ClientID: oidcClient, ClientSecret: oidcSecret, Admins: []string{adminUser.Email},
		ExtraArgs: []string{"--public-url", "http://127.0.0.1:" + strconv.Itoa(port),
			"--source-rate=-1", fmt.Sprintf("--max-devices-per-user=%d", n)},
	})
	if err != nil {
		return err
	}
	defer r.Close()
	urls := r.URLs()
	tr := &http.Transport{MaxIdleConnsPerHost: 2 * scaleRegisterConcurrency, IdleConnTimeout: 30 * time.Second}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	admin := harness.NewUser(m.bin, filepath.Join(dir, "admin"), adminUser)
	if err := admin.LoginWithToken(ctx, m.env.Dex, oidcClient, oidcSecret, urls[0]); err != nil {
		return fmt.Errorf("admin login at the first replica: %w", err)
	}
	if err := admin.API(ctx, urls[0], "POST", "/api/v1/roles", proto.Role{Name: "reader", Groups: []string{readerGroup}}, nil); err != nil {
		return err
	}
	// One cluster per round, each with an agent registered that the
	// user's devices cannot see yet. An agent enters its users' maps
	// only while its own map stream is open, so each streams from the
	// first replica, which stays up, until the bench ends.
	actx, stopAgents := context.WithCancel(ctx)
	defer stopAgents()
	var keys [scaleRounds]proto.Key
	for i := range keys {
		var cl proto.CreateClusterResponse
		if err := admin.API(ctx, urls[0], "POST", "/api/v1/clusters", proto.CreateClusterRequest{Name: haCluster(i)}, &cl); err != nil {
			return err
		}
		rand.Read(keys[i][:])
		tok, err := registerSimAgent(ctx, hc, urls[0], cl.JoinToken, keys[i], i)
		if err != nil {
			return err
		}
		if err := openSimAgentMap(actx, urls[0], tok); err != nil {
			return err
		}
	}

	idt, err := m.env.Dex.IDToken(ctx, benchUser.Email, benchUser.Password)
	if err != nil {
		return err
	}
	var sess proto.Session
	if err := harness.CallAPIWith(ctx, hc, urls[0], "POST", proto.APIVersion+"/login/token", "", proto.TokenExchangeRequest{IDToken: idt}, &sess); err != nil {
		return fmt.Errorf("%s login: %w", benchUser.Email, err)
	}
	// Another replica knows the session once it followed the login's
	// commit (a few milliseconds).
	for _, u := range urls {
		var last error
		if err := until(ctx, 10*time.Second, func() bool {
			last = harness.CallAPIWith(ctx, hc, u, "GET", proto.APIVersion+"/whoami", sess.Token, nil, nil)
			return last == nil
		}); err != nil {
			return fmt.Errorf("the session at %s: %w: %w", u, err, last)
		}
	}
	progress("registering %d devices over %d replicas", n, haReplicas)
	start := time.Now()
	tokens := make([]string, n)
	var done atomic.Int64
	if err := parallel(ctx, n, haReplicas*scaleRegisterConcurrency, func(i int) error {
		var k proto.Key
		rand.Read(k[:])
		var resp proto.RegisterResponse
		req := proto.RegisterDeviceRequest{PublicKey: k, Hostname: "ha-" + strconv.Itoa(i)}
		if err := harness.CallAPIWith(ctx, hc, urls[i%haReplicas], "POST", proto.APIVersion+"/devices", sess.Token, req, &resp); err != nil {
			return fmt.Errorf("device %d: %w", i, err)
		}
		tokens[i] = resp.NodeToken
		if d := done.Add(1); d%1000 == 0 {
			progress("%d devices registered", d)
		}
		return nil
	}); err != nil {
		return err
	}
	progress("%d devices registered in %v", n, time.Since(start).Round(time.Millisecond))

	sctx, cancel := context.WithCancel(ctx)
	w := newWatch(n, keys[:])
	defer func() { cancel(); w.wg.Wait() }()
	start = time.Now()
	if err := w.open(sctx, urls, tokens, 0); err != nil {
		return err
	}
	progress("%d map streams open over %d replicas in %v", n, haReplicas, time.Since(start).Round(time.Millisecond))

	samples := make([]time.Duration, 0, n*scaleRounds)
	for rd := range scaleRounds {
		t0 := time.Now()
		if err := admin.API(ctx, urls[0], "POST", "/api/v1/assignments", proto.Assignment{User: benchUser.Email, Role: "reader", Cluster: haCluster(rd)}, nil); err != nil {
			return fmt.Errorf("round %d: %w", rd+1, err)
		}
		took, err := w.waitRound(ctx, rd, t0)
		if err != nil {
			return fmt.Errorf("round %d: %w", rd+1, err)
		}
		samples = append(samples, took...)
		progress("round %d: every stream saw the assignment within %v", rd+1, slices.Max(took).Round(time.Microsecond))
	}

	progress("killing replica %d (SIGKILL)", haReplicas)
	killed := time.Now()
	r.Coords[haReplicas-1].Proc.Kill()
	var moved []int
	for i := haReplicas - 1; i < n; i += haReplicas {
		moved = append(moved, i)
	}
	if err := until(ctx, scaleChangeTimeout, func() bool {
		for _, i := range moved {
			if w.snapAt[i].Load() < killed.UnixNano() {
				return false
			}
		}
		return true
	}); err != nil {
		select {
		case serr := <-w.errc:
			err = serr
		default:
		}
		return fmt.Errorf("streams of the killed replica back on another: %w", err)
	}
	back := make([]time.Duration, len(moved))
	for j, i := range moved {
		back[j] = time.Duration(w.snapAt[i].Load() - killed.UnixNano())
	}

	report("ha_devices", float64(n), "devices")
	report("ha_change_fanout_p50_ms", ms(percentile(samples, 50)), "ms")
	report("ha_change_fanout_p99_ms", ms(percentile(samples, 99)), "ms")
	report("ha_failover_devices", float64(len(moved)), "devices")
	report("ha_failover_reconnect_p50_ms", ms(percentile(back, 50)), "ms")
	report("ha_failover_reconnect_p99_ms", ms(percentile(back, 99)), "ms")
	return nil
}

// haCluster names the cluster of benchHA's round i.
func haCluster(i int) string { return "ha-" + strconv.Itoa(i) }
