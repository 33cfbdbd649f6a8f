package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

const (
	// scaleCluster is the cluster whose role the scale users hold, so a
	// change on it affects exactly the scale devices.
	scaleCluster = "scale"
	// scaleDevicesPerUser is how many devices each simulated scale user
	// registers.
	scaleDevicesPerUser = 100
	// scaleRounds is how many changes the fan-out is measured over.
	scaleRounds = 3
	// scaleRegisterConcurrency bounds concurrent logins and role
	// assignments of the scale users; -register-concurrency bounds the
	// device registrations.
	scaleRegisterConcurrency = 8
	// scaleOpenConcurrency bounds map streams waiting for their snapshot.
	scaleOpenConcurrency = 32
	// scaleChangeTimeout bounds how long every stream may take to see a
	// change.
	scaleChangeTimeout = 30 * time.Second
	// scaleFewNodes is the smaller count of connected nodes the CPU per
	// change is measured at, beside -scale-nodes.
	scaleFewNodes = 1000
	// changeCPURounds is how many revoke/grant pairs changeCPU makes: the
	// coordinator's CPU time is read in 10 ms ticks, and a change costs
	// well under 1 ms.
	changeCPURounds = 200
)

// changeCPU returns the coordinator's CPU time per change of one user's
// assignment (the bench user's role revoked, granted again): the admin
// API call, the store, and the map deltas to that user's devices and the
// cluster's agents. With the scale devices connected, it must not grow
// with their number. What the coordinator spends meanwhile on the open
// streams' keep-alives is not the change's: its CPU over as long a time
// with no change is taken off.
func (m *mesh) changeCPU(ctx context.Context, pid int) (time.Duration, error) {
	if err := m.ensureGranted(ctx); err != nil {
		return 0, err
	}
	cpu0, err := cpuTime(pid)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	for range changeCPURounds {
		if err := m.revoke(ctx); err != nil {
			return 0, err
		}
		if err := m.grant(ctx); err != nil {
			return 0, err
		}
	}
	took := time.Since(start)
	cpu1, err := cpuTime(pid)
	if err != nil {
		return 0, err
	}
	select {
	case <-time.After(took):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	cpu2, err := cpuTime(pid)
	if err != nil {
		return 0, err
	}
	return max(0, (cpu1-cpu0)-(cpu2-cpu1)) / (2 * changeCPURounds), nil
}

// nodeCount names a node count in a bench name: 1k, 10k, or the number.
func nodeCount(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return strconv.Itoa(n/1000) + "k"
	}
	return strconv.Itoa(n)
}

// storeSyncRate opens a bare bbolt store in a new directory under dir
// and returns the acknowledged writes a second writers goroutines make on
// it (writeFor): the rate the disk allows registrations.
func storeSyncRate(ctx context.Context, dir string, writers int) (float64, error) {
	d, err := os.MkdirTemp(dir, "store-sync-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(d)
	st, err := store.OpenBolt(filepath.Join(d, "coordinator.db"))
	if err != nil {
		return 0, err
	}
	defer st.Close()
	n, err := writeFor(ctx, st, writers, []byte(strings.Repeat("x", 400)))
	if err != nil {
		return 0, fmt.Errorf("bare store: %w", err)
	}
	return float64(n) / storeBenchFor.Seconds(), nil
}

// benchScale measures the coordinator against the budget in docs/design.md §5:
// f.scaleNodes simulated devices (users scale-NNN@example.com with
// scaleDevicesPerUser devices each, all holding the reader role on the
// cluster "scale") each hold one map stream, registered by
// f.registerConcurrency concurrent callers. It reports how long opening
// every stream took until each had its snapshot, the coordinator's
// resident memory and its growth per connected node, and then, over
// scaleRounds rounds, the time from registering a new agent in the
// cluster until each stream has seen it as a peer. Beside the
// registrations it measures the bare store's synced writes with as many
// writers (the disk's limit), and the CPU of one user's assignment change
// with scaleFewNodes and with all n streams open (changeCPU).
func benchScale(ctx context.Context, m *mesh, f flags) error {
	n := f.scaleNodes
	if n <= 0 {
		return nil
	}
	// One pooled client for the registrations: the default one keeps two
	// idle connections per host, and the others' TIME_WAIT sockets would
	// eat into the ports the streams need.
	tr := &http.Transport{MaxIdleConnsPerHost: 2 * max(scaleRegisterConcurrency, f.registerConcurrency), IdleConnTimeout: 30 * time.Second}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	var cl proto.CreateClusterResponse
	if err := m.api(ctx, "POST", "/api/v1/clusters", proto.CreateClusterRequest{Name: scaleCluster}, &cl); err != nil {
		return err
	}
	pid := m.coord.Proc.Pid()
	tokens, reg, err := m.scaleDevices(ctx, hc, n, f.registerConcurrency)
	if err != nil {
		return fmt.Errorf("scale devices: %w", err)
	}
	regCPU, callerCPU := reg.coordCPU/time.Duration(n), reg.callerCPU/time.Duration(n)
	progress("%d scale devices registered in %v (%.0f/s), %v of coordinator CPU and %v of the callers' each",
		n, reg.took.Round(time.Millisecond), float64(n)/reg.took.Seconds(), regCPU, callerCPU)
	// The limit the disk sets: the bare store's acknowledged writes with
	// as many writers, beside the coordinator's data directory.
	syncRate, err := storeSyncRate(ctx, m.dir, f.registerConcurrency)
	if err != nil {
		return err
	}
	progress("the bare store takes %.0f synced writes/s from %d writers", syncRate, f.registerConcurrency)

	before, err := rssKiB(pid)
	if err != nil {
		return err
	}
	mBefore := goMetrics(ctx, hc, m.coord.URL)

	// The agent keys are known up front so every stream can watch for
	// them from its snapshot on.
	var keys [scaleRounds]proto.Key
	for i := range keys {
		rand.Read(keys[i][:])
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := newWatch(n, keys[:])
	// The streams open in two steps, so the CPU a change costs the
	// coordinator is measured with scaleFewNodes and with n connected.
	var connect time.Duration
	changeCPU := map[int]time.Duration{}
	for _, upto := range slices.Compact([]int{min(n, scaleFewNodes), n}) {
		from := int(w.opened.Load())
		progress("opening map streams %d to %d", from+1, upto)
		start := time.Now()
		if err := w.open(sctx, []string{m.coord.URL}, tokens[from:upto], from); err != nil {
			cancel()
			w.wg.Wait()
			return err
		}
		connect += time.Since(start)
		c, err := m.changeCPU(ctx, pid)
		if err != nil {
			cancel()
			w.wg.Wait()
			return err
		}
		changeCPU[upto] = c
		progress("%d map streams open: %v of coordinator CPU per change of one user's assignment", upto, c)
	}
	after, err := rssKiB(pid)
	if err != nil {
		cancel()
		w.wg.Wait()
		return err
	}
	progress("%d map streams open in %v; coordinator RSS %d KiB before, %d KiB after; snapshot %d bytes",
		n, connect.Round(time.Millisecond), before, after, w.snapBytes.Load())
	mAfter := goMetrics(ctx, hc, m.coord.URL)
	for _, k := range []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes"} {
		if a, ok := mAfter[k]; ok {
			progress("coordinator %s: %.0f before, %.0f after, %.1f per node", k, mBefore[k], a, (a-mBefore[k])/float64(n))
		}
	}

	samples := make([]time.Duration, 0, n*scaleRounds)
	var agentTokens []string
	for r := range scaleRounds {
		t0 := time.Now()
		tok, err := registerSimAgent(ctx, hc, m.coord.URL, cl.JoinToken, keys[r], r)
		if err != nil {
			cancel()
			w.wg.Wait()
			return fmt.Errorf("round %d: %w", r+1, err)
		}
		agentTokens = append(agentTokens, tok)
		// A new agent enters its users' maps once its own map stream
		// opens, as `clustral agent` opens it right after registering.
		if err := openSimAgentMap(sctx, m.coord.URL, tok); err != nil {
			cancel()
			w.wg.Wait()
			return fmt.Errorf("round %d: %w", r+1, err)
		}
		took, err := w.waitRound(ctx, r, t0)
		if err != nil {
			cancel()
			w.wg.Wait()
			return fmt.Errorf("round %d: %w", r+1, err)
		}
		samples = append(samples, took...)
		progress("round %d: every stream saw the new agent within %v", r+1, slices.Max(took).Round(time.Microsecond))
	}
	cancel()
	w.wg.Wait()

	report("scale_nodes", float64(n), "nodes")
	report("scale_register_per_s", float64(n)/reg.took.Seconds(), "devices/s")
	report("scale_register_concurrency", float64(f.registerConcurrency), "callers")
	report(fmt.Sprintf("store_sync_per_s_%d", f.registerConcurrency), syncRate, "writes/s")
	report("scale_register_vs_store_sync", float64(n)/reg.took.Seconds()/syncRate, "ratio")
	// The coordinator's CPU per registration (HTTP, authentication, the
	// store's transaction), steadier than the rate on a shared machine:
	// 1e6/scale_register_cpu_us is what one core could take.
	report("scale_register_cpu_us", us(regCPU), "µs")
	// The callers' CPU per registration (this process: JSON and the
	// HTTP client) is spent on the same cores: 1e6*cores/(the sum of
	// the two) is the rate this machine allows.
	report("scale_register_caller_cpu_us", us(callerCPU), "µs")
	report("scale_connect_s", connect.Seconds(), "s")
	report("coordinator_rss_mib", float64(after)/1024, "MiB")
	report("coordinator_rss_per_node_kib", float64(after-before)/float64(n), "KiB")
	for _, k := range slices.Sorted(maps.Keys(changeCPU)) {
		report("coordinator_change_cpu_us_"+nodeCount(k), us(changeCPU[k]), "µs")
	}
	report("scale_change_fanout_p50_ms", ms(percentile(samples, 50)), "ms")
	report("scale_change_fanout_p99_ms", ms(percentile(samples, 99)), "ms")
	report("scale_change_fanout_max_ms", ms(percentile(samples, 100)), "ms")

	// The simulated agents go; the devices stay (this bench runs last).
	for _, tok := range agentTokens {
		if err := harness.CallAPIWith(ctx, hc, m.coord.URL, "DELETE", proto.APIVersion+"/nodes/self", tok, nil, nil); err != nil {
			progress("deregister simulated agent: %v", err)
		}
	}
	return nil
}

// registration is what registering the scale devices took: the time,
// the coordinator's CPU and this process's (the callers').
type registration struct{ took, coordCPU, callerCPU time.Duration }

// scaleDevices makes n/scaleDevicesPerUser (rounded up) Dex users, logs
// each in with an ID token, assigns each the reader role on the scale
// cluster and registers their devices with random keys, and returns the
// devices' node tokens and what registering the devices took.
func (m *mesh) scaleDevices(ctx context.Context, hc *http.Client, n, conc int) ([]string, registration, error) {
	// Dex keeps only the users it is given: the others must stay.
	users := crowdDexUsers()
	type job struct {
		user    harness.DexUser
		devices int
	}
	var jobs []job
	for i := 0; i*scaleDevicesPerUser < n; i++ {
		u := harness.DexUser{Email: fmt.Sprintf("scale-%03d@example.com", i), Password: "scale-pw"}
		users = append(users, u)
		jobs = append(jobs, job{u, min(scaleDevicesPerUser, n-i*scaleDevicesPerUser)})
	}
	progress("restarting Dex with %d users", len(users))
	if err := m.env.Dex.Restart(ctx, users); err != nil {
		return nil, registration{}, err
	}
	// Log every user in and assign the role first, then register the
	// devices with bounded concurrency across all users.
	sessions := make([]string, len(jobs))
	if err := parallel(ctx, len(jobs), scaleRegisterConcurrency, func(i int) error {
		u := jobs[i].user
		idt, err := m.env.Dex.IDToken(ctx, u.Email, u.Password)
		if err != nil {
			return err
		}
		var s proto.Session
		if err := harness.CallAPIWith(ctx, hc, m.coord.URL, "POST", proto.APIVersion+"/login/token", "", proto.TokenExchangeRequest{IDToken: idt}, &s); err != nil {
			return fmt.Errorf("%s: %w", u.Email, err)
		}
		sessions[i] = s.Token
		if err := m.api(ctx, "POST", "/api/v1/assignments", proto.Assignment{User: u.Email, Role: "reader", Cluster: scaleCluster}, nil); err != nil {
			return fmt.Errorf("%s: %w", u.Email, err)
		}
		return nil
	}); err != nil {
		return nil, registration{}, err
	}
	progress("%d scale users logged in; registering %d devices", len(jobs), n)
	pids := []int{m.coord.Proc.Pid(), os.Getpid()}
	cpu0, err := cpuTimes(pids)
	if err != nil {
		return nil, registration{}, err
	}
	start := time.Now()
	tokens := make([]string, n)
	var done atomic.Int64
	if err := parallel(ctx, n, max(1, conc), func(i int) error {
		j := i / scaleDevicesPerUser
		var k proto.Key
		rand.Read(k[:]) // any 32 bytes are a Curve25519 public key
		req := proto.RegisterDeviceRequest{PublicKey: k, Hostname: "scale-" + strconv.Itoa(i)}
		var resp proto.RegisterResponse
		if err := harness.CallAPIWith(ctx, hc, m.coord.URL, "POST", proto.APIVersion+"/devices", sessions[j], req, &resp); err != nil {
			return fmt.Errorf("%s device %d: %w", jobs[j].user.Email, i, err)
		}
		if resp.NodeToken == "" {
			return fmt.Errorf("%s device %d: no node token", jobs[j].user.Email, i)
		}
		tokens[i] = resp.NodeToken
		if d := done.Add(1); d%1000 == 0 {
			progress("%d devices registered", d)
		}
		return nil
	}); err != nil {
		return nil, registration{}, err
	}
	took := time.Since(start)
	cpu1, err := cpuTimes(pids)
	if err != nil {
		return nil, registration{}, err
	}
	return tokens, registration{took, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]}, nil
}

// parallel runs fn(0..n-1) on at most conc goroutines and returns the
// first error; after one it starts no more calls.
func parallel(ctx context.Context, n, conc int, fn func(i int) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(conc)
	for i := range n {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return fn(i) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// registerSimAgent registers an agent with key k in the cluster of
// joinToken, as `clustral agent` does, and returns its node token.
func registerSimAgent(ctx context.Context, hc *http.Client, coordURL, joinToken string, k proto.Key, i int) (string, error) {
	resp, err := harness.RegisterAgent(ctx, hc, coordURL, joinToken, k, "scale-agent-"+strconv.Itoa(i))
	if err != nil {
		return "", fmt.Errorf("register simulated agent: %w", err)
	}
	return resp.NodeToken, nil
}

// openSimAgentMap opens the map stream of the simulated agent whose node
// token is token and reads it, discarding what comes, until ctx ends.
func openSimAgentMap(ctx context.Context, coordURL, token string) error {
	req, err := http.NewRequestWithContext(ctx, "GET", coordURL+proto.APIVersion+"/map", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req) // no timeout: the stream lasts
	if err != nil {
		return fmt.Errorf("simulated agent's map stream: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return fmt.Errorf("simulated agent's map stream: %s", resp.Status)
	}
	go func() {
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
	}()
	return nil
}

// watch holds n map streams, each on its own raw connection read by its
// own goroutine, and records when each stream first saw each of keys.
type watch struct {
	keys []proto.Key
	// seen[i][r] is when stream i first saw keys[r] (Unix nanoseconds; 0:
	// not yet).
	seen [][scaleRounds]atomic.Int64
	// count[r] counts the streams that have seen keys[r]; all[r] is closed
	// when it reaches n.
	count [scaleRounds]atomic.Int64
	all   [scaleRounds]chan struct{}
	// snapBytes is the size of one snapshot line.
	snapBytes atomic.Int64
	// snapAt[i] is when stream i last read a snapshot (Unix nanoseconds).
	snapAt []atomic.Int64

	// opened counts the streams open has started.
	opened atomic.Int64

	// errc receives the first stream failure.
	errc chan error
	wg   sync.WaitGroup
}

func newWatch(n int, keys []proto.Key) *watch {
	w := &watch{keys: keys, seen: make([][scaleRounds]atomic.Int64, n), snapAt: make([]atomic.Int64, n), errc: make(chan error, 1)}
	for r := range w.all {
		w.all[r] = make(chan struct{})
	}
	return w
}

func (w *watch) fail(err error) {
	select {
	case w.errc <- err:
	default:
	}
}

// open starts one stream per token, stream from+i for tokens[i], stream
// j at coordURLs[j%len], and returns once each of them has its snapshot. The streams run until ctx
// is done; w.wg counts them. With one URL a stream that ends is a
// failure; with several, a stream that ends opens again at the next URL
// at once, as a device given several coordinator URLs does.
func (w *watch) open(ctx context.Context, coordURLs []string, tokens []string, from int) error {
	hosts := make([]string, len(coordURLs))
	for i, cu := range coordURLs {
		u, err := url.Parse(cu)
		if err != nil {
			return err
		}
		hosts[i] = u.Host
	}
	var synced sync.WaitGroup
	synced.Add(len(tokens))
	sem := make(chan struct{}, scaleOpenConcurrency)
	for i, tok := range tokens {
		i += from
		select {
		case sem <- struct{}{}:
		case err := <-w.errc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
		w.wg.Go(func() {
			var once sync.Once
			ready := func() { once.Do(func() { <-sem; synced.Done() }) }
			defer ready()
			if err := w.follow(ctx, hosts, tok, i, ready); err != nil && ctx.Err() == nil {
				w.fail(fmt.Errorf("map stream %d: %w", i, err))
			}
		})
		w.opened.Add(1)
		if (i+1)%1000 == 0 {
			progress("%d map streams started", i+1)
		}
	}
	done := make(chan struct{})
	go func() { synced.Wait(); close(done) }()
	select {
	case <-done:
		// A stream that failed before its snapshot also counts as done.
		select {
		case err := <-w.errc:
			return err
		default:
			return nil
		}
	case err := <-w.errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// follow holds stream i at hosts[i%len(hosts)] and, with several hosts,
// opens it again at the next one whenever it ends. It gives up when
// every host in turn failed to give a snapshot.
func (w *watch) follow(ctx context.Context, hosts []string, token string, i int, ready func()) error {
	failed := 0
	for j := i; ; j++ {
		before := w.snapAt[i].Load()
		err := w.stream(ctx, hosts[j%len(hosts)], token, i, ready)
		if ctx.Err() != nil || len(hosts) == 1 {
			return err
		}
		if w.snapAt[i].Load() != before {
			failed = 0
		} else if failed++; failed >= len(hosts) {
			return fmt.Errorf("no snapshot from any of %d coordinators: %w", len(hosts), err)
		}
	}
}

// stream holds stream i: it calls ready once the snapshot is read and
// returns when the stream ends or ctx is done.
func (w *watch) stream(ctx context.Context, host, token string, i int, ready func()) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	req := "GET " + proto.APIVersion + "/map HTTP/1.1\r\nHost: " + host +
		"\r\nAuthorization: Bearer " + token + "\r\nAccept: application/x-ndjson\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 2048), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b := make([]byte, 512)
		nb, _ := resp.Body.Read(b)
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b[:nb]))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 4096), 16<<20)
	first := true
	for sc.Scan() {
		now := time.Now().UnixNano()
		var msg proto.MapMessage
		if err := json.Unmarshal(sc.Bytes(), &msg); err != nil {
			return fmt.Errorf("decode map message: %w", err)
		}
		if first {
			if !msg.Snapshot {
				return errors.New("first map message is not a snapshot")
			}
			first = false
			w.snapBytes.Store(int64(len(sc.Bytes())))
		}
		for _, p := range msg.Peers {
			for r, k := range w.keys {
				if p.Key == k && w.seen[i][r].CompareAndSwap(0, now) {
					if w.count[r].Add(1) == int64(len(w.seen)) {
						close(w.all[r])
					}
				}
			}
		}
		if msg.Snapshot {
			w.snapAt[i].Store(now)
			ready()
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return errors.New("closed by the coordinator")
}

// waitRound waits until every stream has seen keys[r] and returns how
// long after since each one saw it.
func (w *watch) waitRound(ctx context.Context, r int, since time.Time) ([]time.Duration, error) {
	t := time.NewTimer(scaleChangeTimeout)
	defer t.Stop()
	select {
	case <-w.all[r]:
	case err := <-w.errc:
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, fmt.Errorf("%d of %d streams saw the change within %v", w.count[r].Load(), len(w.seen), scaleChangeTimeout)
	}
	took := make([]time.Duration, len(w.seen))
	for i := range w.seen {
		took[i] = time.Duration(w.seen[i][r].Load() - since.UnixNano())
	}
	return took, nil
}

// goMetrics returns the Go runtime gauges of the coordinator's /metrics,
// or what it could read of them.
func goMetrics(ctx context.Context, hc *http.Client, coordURL string) map[string]float64 {
	out := map[string]float64{}
	req, err := http.NewRequestWithContext(ctx, "GET", coordURL+"/metrics", nil)
	if err != nil {
		return out
	}
	resp, err := hc.Do(req)
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok || !strings.HasPrefix(name, "go_") {
			continue
		}
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			out[name] = f
		}
	}
	return out
}

// cpuTime returns the user and system CPU time process pid has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("CPU time of process %d: %w", pid, err)
	}
	// The fields after the command, which is in parentheses and may
	// hold spaces: state is the 3rd field, utime the 14th, stime the 15th.
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0, fmt.Errorf("CPU time of process %d: unexpected /proc/%d/stat", pid, pid)
	}
	var ticks int64
	for _, v := range f[11:13] {
		t, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("CPU time of process %d: %w", pid, err)
		}
		ticks += t
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// cpuTimes is cpuTime of each of pids, in order.
func cpuTimes(pids []int) ([]time.Duration, error) {
	ts := make([]time.Duration, len(pids))
	for i, pid := range pids {
		t, err := cpuTime(pid)
		if err != nil {
			return nil, err
		}
		ts[i] = t
	}
	return ts, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// rssKiB returns the resident set size of process pid.
func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("coordinator memory: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) < 1 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("coordinator memory: no VmRSS in /proc/%d/status", pid)
}
