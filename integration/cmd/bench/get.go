package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/clustral/clustral/integration/harness"
)

// getPath is the small GET both paths make.
const getPath = "/api/v1/namespaces/default/configmaps/" + configMap

// meshConfig is the rest.Config of the kubeconfig context `clustral up`
// wrote for the bench cluster: SOCKS5 proxy-url and the mesh CA.
func meshConfig(m *mesh) (*rest.Config, error) { return userConfig(m.user) }

// userConfig is meshConfig for user u.
func userConfig(u *harness.User) (*rest.Config, error) {
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: u.Kubeconfig},
		&clientcmd.ConfigOverrides{CurrentContext: kubeContext},
	).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load context %s from %s: %w", kubeContext, u.Kubeconfig, err)
	}
	return cfg, nil
}

// getProbe returns a function that GETs getPath through the mesh as the
// bench user and fails unless the answer is 200. With fresh, every GET
// opens a new connection; else one warm connection is reused.
func getProbe(ctx context.Context, m *mesh, fresh bool) (func() error, error) {
	cfg, err := meshConfig(m)
	if err != nil {
		return nil, err
	}
	rt, err := rest.TransportFor(cfg)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: rt, Timeout: probeTimeout}
	return func() error {
		if fresh {
			hc.CloseIdleConnections()
		}
		req, err := http.NewRequestWithContext(ctx, "GET", cfg.Host+getPath, nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", getPath, resp.Status)
		}
		return nil
	}, nil
}

// probeUntil runs probe back to back until ok(its error), for at most
// 30 s, and returns when the deciding probe ended.
func probeUntil(ctx context.Context, probe func() error, ok func(error) bool) (time.Time, error) {
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

// restClient is a client-go REST client for cfg without client-side rate
// limiting, so the measured time is the request's alone.
func restClient(cfg *rest.Config) (rest.Interface, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return cs.CoreV1().RESTClient(), nil
}

// benchGet times GET getPath through the mesh and straight to the
// apiserver, alternating which goes first, on each path's one reused
// connection.
func benchGet(ctx context.Context, m *mesh, f flags) error {
	mc, err := meshConfig(m)
	if err != nil {
		return err
	}
	proxy, err := restClient(mc)
	if err != nil {
		return err
	}
	direct, err := restClient(m.env.APIServer.Config())
	if err != nil {
		return err
	}
	// The same request straight to the apiserver as the agent sends it:
	// impersonating the bench user with the role's group. Its difference
	// to direct is the apiserver's own price of impersonation; the proxy's
	// to it is the mesh and the agent.
	ic := m.env.APIServer.Config()
	ic.Impersonate = rest.ImpersonationConfig{UserName: benchUser.Email, Groups: []string{readerGroup}}
	impersonated, err := restClient(ic)
	if err != nil {
		return err
	}
	// The measured limit: the same impersonating GET through a plain
	// two-hop proxy (plainProxy) in place of the mesh.
	pp, pc, err := startPlainProxy(ic)
	if err != nil {
		return err
	}
	defer pp.Close()
	plain, err := restClient(pc)
	if err != nil {
		return err
	}
	get := func(c rest.Interface) (time.Duration, error) {
		start := time.Now()
		_, err := c.Get().AbsPath(getPath).DoRaw(ctx)
		return time.Since(start), err
	}
	progress("GET %s: %d warm-up and %d timed requests per path", getPath, f.warmup, f.samples)
	for range f.warmup {
		if _, err := get(proxy); err != nil {
			return fmt.Errorf("GET through the mesh: %w", err)
		}
		if _, err := get(direct); err != nil {
			return fmt.Errorf("GET direct: %w", err)
		}
		if _, err := get(impersonated); err != nil {
			return fmt.Errorf("GET direct, impersonating: %w", err)
		}
		if _, err := get(plain); err != nil {
			return fmt.Errorf("GET through a plain proxy: %w", err)
		}
	}
	// The CPU the two clustral processes on the path spend over the timed
	// loop, per GET through the mesh: steadier than latency on a shared
	// machine. Only the mesh GETs pass through them.
	upPid, err := upPID(m.user.Dir)
	if err != nil {
		return err
	}
	pids := []int{upPid, m.agent.Proc.Pid()}
	progress("timing: clustral up pid %d, agent pid %d", pids[0], pids[1])
	cpu0, err := cpuTimes(pids)
	if err != nil {
		return err
	}
	var ps, ds, is, pls []time.Duration
	for i := range f.samples {
		first, second := proxy, direct
		if i%2 == 1 {
			first, second = direct, proxy
		}
		a, err := get(first)
		if err != nil {
			return fmt.Errorf("GET: %w", err)
		}
		b, err := get(second)
		if err != nil {
			return fmt.Errorf("GET: %w", err)
		}
		if i%2 == 1 {
			a, b = b, a
		}
		ps, ds = append(ps, a), append(ds, b)
		d, err := get(impersonated)
		if err != nil {
			return fmt.Errorf("GET: %w", err)
		}
		is = append(is, d)
		if d, err = get(plain); err != nil {
			return fmt.Errorf("GET: %w", err)
		}
		pls = append(pls, d)
	}
	cpu1, err := cpuTimes(pids)
	if err != nil {
		return err
	}
	if profileDir != "" {
		// Profiles come from a pass of their own after the timed loop,
		// so that profiling does not weigh on the numbers: GETs through
		// the mesh back to back for as long as the profiles run.
		profiled := startProfiles(ctx, m.pprof)
		end := time.Now().Add(time.Duration(profileSeconds)*time.Second + 500*time.Millisecond)
		for time.Now().Before(end) {
			if _, err := get(proxy); err != nil {
				return fmt.Errorf("GET, profiled: %w", err)
			}
		}
		if err := profiled(); err != nil {
			return err
		}
	}
	perGet := func(i int) float64 { return us(cpu1[i]-cpu0[i]) / float64(len(ps)) }
	p50, d50 := percentile(ps, 50), percentile(ds, 50)
	report("proxy_get_p50_us", us(p50), "us")
	report("direct_get_p50_us", us(d50), "us")
	report("proxy_get_p99_us", us(percentile(ps, 99)), "us")
	report("direct_get_p99_us", us(percentile(ds, 99)), "us")
	report("proxy_overhead_p50_us", us(p50-d50), "us")
	i50 := percentile(is, 50)
	report("direct_impersonating_get_p50_us", us(i50), "us")
	report("proxy_overhead_vs_impersonating_p50_us", us(p50-i50), "us")
	report("proxy_overhead_vs_impersonating_p99_us", us(percentile(ps, 99)-percentile(is, 99)), "us")
	pl50 := percentile(pls, 50)
	report("plain_proxy_get_p50_us", us(pl50), "us")
	report("plain_proxy_overhead_vs_impersonating_p50_us", us(pl50-i50), "us")
	report("plain_proxy_overhead_vs_impersonating_p99_us", us(percentile(pls, 99)-percentile(is, 99)), "us")
	report("up_cpu_us_per_get", perGet(0), "us")
	report("agent_cpu_us_per_get", perGet(1), "us")
	report("get_samples", float64(len(ps)), "requests")
	return nil
}
