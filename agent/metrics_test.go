package agent

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// value reads a counter or gauge.
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

// series counts the series of family name in reg.
func series(t *testing.T, reg prometheus.Gatherer, name string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return len(mf.Metric)
		}
	}
	return 0
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	watching := make(chan struct{})
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("watch") == "true" {
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			close(watching)
			<-r.Context().Done()
			return
		}
		w.Write([]byte("{}"))
	}), func(c *ProxyConfig) {
		c.Metrics = reg
		c.RateLimit, c.RateBurst = 0.001, 3
	})
	m := h.proxy.metrics
	count := func(c prometheus.Metric) func() float64 { return func() float64 { return value(c) } }

	// Every series exists before the first request.
	for _, name := range []string{"clustral_proxy_live_streams", "clustral_proxy_rate_limited_total"} {
		if n := series(t, reg, name); n == 0 {
			t.Errorf("no series %s", name)
		}
	}

	for range 2 {
		if resp, b := h.get("/api/v1/namespaces/default/pods"); resp.StatusCode != 200 {
			t.Fatalf("list pods: %d %s", resp.StatusCode, b)
		}
	}
	list200 := count(m.requests.WithLabelValues("200", "list"))
	testkit.WaitFor(t, "two lists counted", func() bool { return list200() == 2 })

	// A watch is live while it streams, and done after.
	req, _ := http.NewRequestWithContext(t.Context(), "GET", h.url("/api/v1/namespaces/default/pods?watch=true"), nil)
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Recv(t, watching, "watch upstream")
	if got := value(m.live); got != 1 {
		t.Errorf("live streams during a watch = %v, want 1", got)
	}
	resp.Body.Close()
	testkit.WaitFor(t, "watch counted", func() bool { return count(m.requests.WithLabelValues("200", "watch"))() == 1 })
	testkit.WaitFor(t, "no live streams", func() bool { return value(m.live) == 0 })

	// The burst of 3 is spent: the next is refused.
	resp2, b := h.get("/api/v1/namespaces/default/pods")
	if resp2.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("over the limit: %d %s", resp2.StatusCode, b)
	}
	testkit.WaitFor(t, "rate limit counted", func() bool { return value(m.rateLimited) == 1 })
	if got := value(m.denials.WithLabelValues(string(proto.CodeRateLimited))); got != 1 {
		t.Errorf("RATE_LIMITED denials = %v, want 1", got)
	}

	// A device with no role is refused with its code.
	h.peers.set(loopback, device(2, "carol@example.com"))
	h.client.CloseIdleConnections()
	if resp, b := h.get("/api/v1/namespaces/default/secrets"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("no role: %d %s", resp.StatusCode, b)
	}
	testkit.WaitFor(t, "no-role denial counted", func() bool {
		return value(m.denials.WithLabelValues(string(proto.CodeNoRoleAssignment))) == 1
	})

	// Latency is observed per verb.
	if n := series(t, reg, "clustral_proxy_request_duration_seconds"); n < 2 {
		t.Errorf("latency histograms = %d, want list and watch", n)
	}
	// No user name or path reaches a label.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				sb.WriteString(l.GetValue() + "\n")
			}
		}
	}
	for _, secret := range []string{"alice", "carol", "/api/", "default"} {
		if strings.Contains(sb.String(), secret) {
			t.Errorf("a label value contains %q", secret)
		}
	}
}

func TestVerbLabel(t *testing.T) {
	for in, want := range map[string]string{
		"list": "list", "watch": "watch", "deletecollection": "deletecollection", "post": "post",
		"PROPFIND": "other", "": "other", "list\n": "other",
	} {
		if got := verbLabel(in); got != want {
			t.Errorf("verbLabel(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[int]string{0: "0", 101: "101", 200: "200", 599: "599", 600: "other", -1: "other"} {
		if got := codeLabel(in); got != want {
			t.Errorf("codeLabel(%d) = %q, want %q", in, got, want)
		}
	}
}

func BenchmarkMetricsDone(b *testing.B) {
	m := newMetrics("prod")
	for b.Loop() {
		m.done("list", 200, "", time.Millisecond)
	}
}
