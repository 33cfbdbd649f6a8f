package agent

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustral/clustral/proto"
)

// metrics are a Proxy's Prometheus series. Label values come from small
// fixed sets (Kubernetes verbs, HTTP status codes, clustral error codes);
// never a user name, a path or anything a client can choose freely.
type metrics struct {
	requests    *prometheus.CounterVec   // code, verb
	latency     *prometheus.HistogramVec // verb
	denials     *prometheus.CounterVec   // code
	rateLimited prometheus.Counter
	live        prometheus.Gauge
}

func newMetrics(cluster string) *metrics {
	cl := prometheus.Labels{"cluster": cluster}
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustral_proxy_requests_total", ConstLabels: cl,
			Help: "Requests through the proxy that completed, by HTTP status code (101 for an upgraded stream, 0 when the client left before an answer) and Kubernetes verb.",
		}, []string{"code", "verb"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "clustral_proxy_request_duration_seconds", ConstLabels: cl,
			Help: "Time from a request's arrival to its completion, by Kubernetes verb; watches and upgraded streams count their whole life.",
			// 0.5 ms to ~70 s.
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 14),
		}, []string{"verb"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustral_proxy_denials_total", ConstLabels: cl,
			Help: "Requests the proxy refused itself, by the X-Clustral-Error-Code it answered with.",
		}, []string{"code"}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clustral_proxy_rate_limited_total", ConstLabels: cl,
			Help: "Requests refused because their user was over the per-user rate limit.",
		}),
		live: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clustral_proxy_live_streams", ConstLabels: cl,
			Help: "Requests in flight: ordinary requests, watches, log streams and upgraded connections.",
		}),
	}
}

// register registers every series with r and creates the series with
// fixed label values, so that they exist from the start.
func (m *metrics) register(r prometheus.Registerer) error {
	m.denials.WithLabelValues(string(proto.CodeRateLimited))
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.denials, m.rateLimited, m.live} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// verbs are the label values of verb: the Kubernetes verbs, and the
// lowercase HTTP methods of non-resource requests. Anything else is
// "other", so a client cannot grow the series.
var verbs = map[string]string{}

func init() {
	for _, v := range []string{
		"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "proxy",
		"post", "put", "head", "options",
	} {
		verbs[v] = v
	}
}

func verbLabel(v string) string {
	if l, ok := verbs[v]; ok {
		return l
	}
	return "other"
}

// codes caches the label values of the HTTP status codes.
var codes = func() (c [600]string) {
	for i := range c {
		c[i] = strconv.Itoa(i)
	}
	return c
}()

func codeLabel(status int) string {
	if status >= 0 && status < len(codes) {
		return codes[status]
	}
	return "other"
}

// done records one completed request: its status, verb and latency, and
// the proxy's own refusal code if it refused it.
func (m *metrics) done(verb string, status int, code proto.ErrorCode, d time.Duration) {
	v := verbLabel(verb)
	m.requests.WithLabelValues(codeLabel(status), v).Inc()
	m.latency.WithLabelValues(v).Observe(d.Seconds())
	if code != "" {
		m.denials.WithLabelValues(string(code)).Inc()
		if code == proto.CodeRateLimited {
			m.rateLimited.Inc()
		}
	}
}
