package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"time"

	"k8s.io/client-go/rest"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// watchIdle is how long benchWatches lets the watches idle while it
// measures the agent's CPU.
const watchIdle = 10 * time.Second

// benchWatches measures one agent under many watches: f.watchUsers users
// each log in, get the bench role and run their own `clustral up`, and
// each holds f.watchesPerUser watches of ConfigMaps through the mesh,
// each on its own connection, as separate kubectl processes hold them.
// It reports the agent's resident set with them open
// (agent_rss_mib_1000_watches, named for the default 100 × 10), its CPU
// while they idle for watchIdle (agent_idle_cpu_pct_1000_watches, % of
// one core), and, after one user's assignment is deleted, how long until
// every watch of that user ended (agent_watch_revocation_ms) while the
// others stay open.
func benchWatches(ctx context.Context, m *mesh, f flags) error {
	if f.watchUsers <= 0 || f.watchesPerUser <= 0 {
		return nil
	}
	dexUsers := crowdDexUsers()
	users := make([]*harness.User, f.watchUsers)
	for i := range users {
		d := harness.DexUser{Email: fmt.Sprintf("watch-%03d@example.com", i), Password: "watch-pw"}
		dexUsers = append(dexUsers, d)
		users[i] = harness.NewUser(m.bin, filepath.Join(m.dir, "watch-users", fmt.Sprint(i)), d)
	}
	progress("restarting Dex with %d users; bringing %d users up", len(dexUsers), len(users))
	if err := m.env.Dex.Restart(ctx, dexUsers); err != nil {
		return err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		parallel(dctx, len(users), 8, func(i int) error {
			if err := users[i].Down(dctx); err != nil {
				progress("clustral down for %s: %v", users[i].Email, err)
			}
			return nil
		})
	}()
	assignments := make([]string, len(users))
	if err := parallel(ctx, len(users), 8, func(i int) error {
		u := users[i]
		if err := u.LoginWithToken(ctx, m.env.Dex, oidcClient, oidcSecret, m.coord.URL); err != nil {
			return fmt.Errorf("%s: login: %w", u.Email, err)
		}
		var a proto.Assignment
		if err := m.api(ctx, "POST", "/api/v1/assignments", proto.Assignment{User: u.Email, Role: "reader", Cluster: cluster}, &a); err != nil {
			return fmt.Errorf("%s: %w", u.Email, err)
		}
		assignments[i] = a.ID
		if err := u.Up(ctx); err != nil {
			return fmt.Errorf("%s: up: %w", u.Email, err)
		}
		return nil
	}); err != nil {
		return err
	}

	pid := m.agent.Proc.Pid()
	before, err := rssKiB(pid)
	if err != nil {
		return err
	}
	progress("%d users up; opening %d watches each (agent RSS %d KiB)", len(users), f.watchesPerUser, before)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ws := make([][]*meshWatch, len(users))
	if err := parallel(ctx, len(users), 8, func(i int) error {
		cfg, err := userConfig(users[i])
		if err != nil {
			return err
		}
		for range f.watchesPerUser {
			w, err := openMeshWatch(wctx, cfg)
			if err != nil {
				return fmt.Errorf("%s: %w", users[i].Email, err)
			}
			ws[i] = append(ws[i], w)
		}
		return nil
	}); err != nil {
		return err
	}
	open, err := rssKiB(pid)
	if err != nil {
		return err
	}
	n := len(users) * f.watchesPerUser
	progress("%d watches open; agent RSS %d KiB (%.1f KiB a watch over before)", n, open, float64(open-before)/float64(n))

	cpu0, err := cpuTime(pid)
	if err != nil {
		return err
	}
	t0 := time.Now()
	select {
	case <-time.After(watchIdle): // the idle period measured
	case <-ctx.Done():
		return ctx.Err()
	}
	cpu1, err := cpuTime(pid)
	if err != nil {
		return err
	}
	idlePct := 100 * (cpu1 - cpu0).Seconds() / time.Since(t0).Seconds()

	// Revoke the first user: its watches end, the others stay.
	start := time.Now()
	if err := m.api(ctx, "DELETE", "/api/v1/assignments/"+assignments[0], nil, nil); err != nil {
		return err
	}
	var last time.Duration
	for _, w := range ws[0] {
		select {
		case <-w.ended:
			last = max(last, w.at.Sub(start))
		case <-time.After(30 * time.Second):
			return fmt.Errorf("a watch of the revoked user %s was still open 30s after the revocation", users[0].Email)
		}
	}
	stillOpen := 0
	for _, uw := range ws[1:] {
		for _, w := range uw {
			select {
			case <-w.ended:
			default:
				stillOpen++
			}
		}
	}
	progress("revoking %s ended its %d watches within %v; %d of the others' %d still open", users[0].Email, len(ws[0]), last.Round(time.Millisecond), stillOpen, n-len(ws[0]))
	if stillOpen != n-len(ws[0]) {
		return fmt.Errorf("%d watches of other users ended with one user's revocation", n-len(ws[0])-stillOpen)
	}
	report("agent_watches", float64(n), "watches")
	report("agent_rss_mib_1000_watches", float64(open)/1024, "MiB")
	report("agent_rss_kib_per_watch", float64(open-before)/float64(n), "KiB")
	report("agent_idle_cpu_pct_1000_watches", idlePct, "%")
	report("agent_watch_revocation_ms", ms(last), "ms")
	return nil
}

// meshWatch is one watch through the mesh; ended is closed, and at set,
// when its answer ends.
type meshWatch struct {
	ended chan struct{}
	at    time.Time
}

// openMeshWatch starts a watch of the default namespace's ConfigMaps with
// cfg on a connection of its own and returns once the answer's header
// came; its body is read, and dropped, until it ends.
func openMeshWatch(ctx context.Context, cfg *rest.Config) (*meshWatch, error) {
	rt, err := rest.TransportFor(rest.CopyConfig(cfg))
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, "GET", cfg.Host+"/api/v1/namespaces/default/configmaps?watch=true", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("watch: %s", resp.Status)
	}
	w := &meshWatch{ended: make(chan struct{})}
	go func() {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		w.at = time.Now()
		close(w.ended)
	}()
	return w, nil
}
