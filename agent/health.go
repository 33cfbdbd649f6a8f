package agent

import (
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/clustral/clustral/agent/spool"
	"github.com/clustral/clustral/node"
)

// agentMetrics returns the registry of the agent's /metrics: the Go and
// process collectors, the agent's own series below, and (registered by
// the proxy) clustral_proxy_*.
func agentMetrics(cluster string, n *node.Node, sp *spool.Spool, serving *servingCert) *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cl := prometheus.Labels{"cluster": cluster}
	relayBytes := func(dir string, f func(node.PathStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "clustral_relay_bytes_total", ConstLabels: prometheus.Labels{"cluster": cluster, "direction": dir},
			Help: "WireGuard bytes sent (tx) and received (rx) through the coordinator's relay.",
		}, func() float64 { return float64(f(n.Bind().Stats(node.PathRelay))) })
	}
	r.MustRegister(
		relayBytes("tx", func(s node.PathStats) uint64 { return s.TxBytes }),
		relayBytes("rx", func(s node.PathStats) uint64 { return s.RxBytes }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "clustral_audit_spool_events", ConstLabels: cl,
			Help: "Audit events spooled on local disk, not yet shipped to the coordinator.",
		}, func() float64 { return float64(sp.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "clustral_agent_certificate_expiry_timestamp_seconds", ConstLabels: cl,
			Help: "When the agent's serving certificate expires (Unix time). The coordinator renews it over the map stream; alert when it gets close.",
		}, func() float64 { return float64(serving.expires().Unix()) }),
	)
	return r
}

// healthHandler serves /healthz (the process is up), /readyz (ready is
// set: the agent has a network map and is not draining) and /metrics.
func healthHandler(ready *atomic.Bool, metrics *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not connected to the mesh yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{Registry: metrics}))
	return mux
}
