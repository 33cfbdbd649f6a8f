package live

import (
	"fmt"
	"net/http"

	"k8s.io/client-go/rest"
)

// HTTPClient returns the client a viewer follows live streams with: that
// of cfg (its TLS, credentials and proxy, as clustral up writes them for
// a cluster) but offering only h2 in ALPN.
//
// An agent serves HTTP/1.1 to clients that offer it, kubectl among them,
// because each request costs it less so; but a viewer holds many long
// streams at once (the console follows one per cluster view and log
// pane) and a snapshot each, and over HTTP/2 they share a connection
// instead of starting one each through the mesh at the same moment.
func HTTPClient(cfg *rest.Config) (*http.Client, error) {
	tc, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("live client for %s: %w", cfg.Host, err)
	}
	var h2 http.Protocols
	h2.SetHTTP2(true)
	tr := &http.Transport{
		TLSClientConfig: tc,
		Proxy:           cfg.Proxy,
		DialContext:     cfg.Dial,
		Protocols:       &h2,
	}
	if tr.Proxy == nil {
		tr.Proxy = http.ProxyFromEnvironment
	}
	rt, err := rest.HTTPWrappersForConfig(cfg, tr)
	if err != nil {
		return nil, fmt.Errorf("live client for %s: %w", cfg.Host, err)
	}
	return &http.Client{Transport: rt, Timeout: cfg.Timeout}, nil
}
