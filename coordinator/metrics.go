package coordinator

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/clustral/clustral/proto"
)

// metrics are a Server's Prometheus series, in a registry of its own so
// that several Servers can live in one process. Label values come from
// small fixed sets: never a user name, a token or a key.
type metrics struct {
	reg *prometheus.Registry

	logins        *prometheus.CounterVec // method, result
	registrations *prometheus.CounterVec // kind
	connected     *prometheus.GaugeVec   // kind
	mapDeltas     prometheus.Counter
	auditLost     prometheus.Counter
	refused       *prometheus.CounterVec // route: unauthenticated requests refused by the rate limit
	// replicaApplied counts changes made by other replicas and applied
	// here (see follow).
	replicaApplied prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustral_coordinator_logins_total",
			Help: "Logins by method (browser, token) and result (success, failure).",
		}, []string{"method", "result"}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustral_coordinator_registrations_total",
			Help: "Nodes registered, by kind (device, agent).",
		}, []string{"kind"}),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "clustral_coordinator_connected_nodes",
			Help: "Nodes holding an open network map stream, by kind (device, agent).",
		}, []string{"kind"}),
		mapDeltas: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clustral_coordinator_map_deltas_sent_total",
			Help: "Network map deltas written to map streams (snapshots and keep-alives not counted).",
		}),
		auditLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clustral_coordinator_audit_events_lost_total",
			Help: "Audit events that could not be queued or stored; each loss is also recorded as one audit event with the count.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustral_coordinator_rate_limited_total",
			Help: "Unauthenticated requests answered 429 because their source address exceeded its rate, by route.",
		}, []string{"route"}),
		replicaApplied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clustral_coordinator_replica_changes_applied_total",
			Help: "Changes committed by other coordinator replicas and applied to this one's state (zero on a lone coordinator).",
		}),
	}
	// Every series exists from the start, so a rate() over a fresh
	// coordinator has a zero to start from.
	for _, method := range []string{"browser", "console", "token"} {
		for _, result := range []string{"success", "failure"} {
			m.logins.WithLabelValues(method, result)
		}
	}
	for _, k := range []proto.NodeKind{proto.KindDevice, proto.KindAgent} {
		m.registrations.WithLabelValues(string(k))
		m.connected.WithLabelValues(string(k))
	}
	m.reg.MustRegister(m.logins, m.registrations, m.connected, m.mapDeltas, m.auditLost, m.refused, m.replicaApplied,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// login counts one login attempt.
func (m *metrics) login(method string, err error) {
	result := "success"
	if err != nil {
		result = "failure"
	}
	m.logins.WithLabelValues(method, result).Inc()
}

// handler serves the registry in the Prometheus exposition formats.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Metrics returns the registry of the Server's Prometheus series, which
// the API serves at GET /metrics. Callers may register more collectors.
func (s *Server) Metrics() *prometheus.Registry { return s.metrics.reg }
