package main

import (
	"context"
	"fmt"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/flowcontrol"
)

// getPath is the small GET both paths make.
const getPath = "/api/v1/namespaces/default/configmaps/" + configMap

// meshConfig is the rest.Config of the kubeconfig context `clustral up`
// wrote for the bench cluster: SOCKS5 proxy-url and the mesh CA.
func meshConfig(m *mesh) (*rest.Config, error) {
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: m.user.Kubeconfig},
		&clientcmd.ConfigOverrides{CurrentContext: kubeContext},
	).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load context %s from %s: %w", kubeContext, m.user.Kubeconfig, err)
	}
	return cfg, nil
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
	}
	var ps, ds []time.Duration
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
	}
	p50, d50 := percentile(ps, 50), percentile(ds, 50)
	report("proxy_get_p50_us", us(p50), "us")
	report("direct_get_p50_us", us(d50), "us")
	report("proxy_get_p99_us", us(percentile(ps, 99)), "us")
	report("direct_get_p99_us", us(percentile(ds, 99)), "us")
	report("proxy_overhead_p50_us", us(p50-d50), "us")
	report("get_samples", float64(len(ps)), "requests")
	return nil
}
