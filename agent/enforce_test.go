package agent

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// Through the proxy: restricted grants refuse with the reason, and an
// allowed request is impersonated with the allowing grants' groups only.
func TestRestrictionsThroughProxy(t *testing.T) {
	seen := make(chan http.Header, 4)
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		w.Write([]byte("{}"))
	}))
	h.peers.set(loopback, device(1, "alice@example.com",
		restricted("viewer", proto.Restrictions{Namespaces: []string{"dev", "staging"}, Verbs: []string{"get", "list", "watch"}}, "viewers"),
		restricted("deployer", proto.Restrictions{Namespaces: []string{"dev"}, APIGroups: []string{"apps"}, Resources: []string{"deployments"}}, "deployers"),
	))

	resp, body := h.get("/api/v1/namespaces/kube-system/pods")
	checkError(t, resp, body, http.StatusForbidden, proto.CodeNamespaceNotAllowed,
		"alice@example.com may not list pods in namespace 'kube-system' on cluster 'prod': role 'viewer' allows namespaces dev, staging; no other role of theirs allows it either. Ask an admin, or run: clustral access request --cluster prod --role <role>\n")

	for _, tt := range []struct {
		path   string
		groups []string
	}{
		{"/api/v1/namespaces/dev/pods", []string{"viewers", "system:authenticated"}},
		{"/apis/apps/v1/namespaces/dev/deployments", []string{"viewers", "deployers", "system:authenticated"}},
		{"/apis", []string{"viewers", "deployers", "system:authenticated"}},
		{"/version", []string{"viewers", "deployers", "system:authenticated"}},
	} {
		resp, body := h.get(tt.path)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", tt.path, resp.StatusCode, body)
		}
		hd := testkit.Recv(t, seen, "upstream request")
		if got := hd.Values("Impersonate-Group"); !slices.Equal(got, tt.groups) {
			t.Errorf("GET %s: Impersonate-Group = %q, want %q", tt.path, got, tt.groups)
		}
	}

	req, _ := http.NewRequest("DELETE", h.url("/apis/apps/v1/namespaces/staging/deployments/web"), nil)
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The viewer grant refuses at the verb, the deployer grant at the
	// namespace, which is more specific.
	if code := resp.Header.Get(proto.HeaderErrorCode); resp.StatusCode != 403 || code != string(proto.CodeNamespaceNotAllowed) {
		t.Errorf("DELETE staging deployment: %d %s, want 403 %s", resp.StatusCode, code, proto.CodeNamespaceNotAllowed)
	}
}

// The sweep closes a watch and an exec stream when the only grant that
// allows them leaves its time window, by the proxy's clock alone.
func TestTimeWindowSweep(t *testing.T) {
	up := &liveUpstream{watch: newWatchUpstream(), upgrade: newEchoUpgrade(t)}
	h := newHarness(t, up, func(c *ProxyConfig) { c.SweepInterval = 10 * time.Millisecond })
	// t0 is Friday 12:00 UTC, 14:00 in Berlin.
	h.peers.set(loopback, device(1, "alice@example.com", restricted("oncall", proto.Restrictions{
		TimeWindows: []proto.TimeWindow{{Days: []string{"fri"}, Start: "13:00", End: "14:01", TimeZone: "Europe/Berlin"}},
	}, "oncall")))

	watch, body := openWatch(t, h)
	defer body.Close()
	exec := openUpgrade(t, h, "websocket")
	h.clock.Add(30 * time.Second)
	exec.echo(t, "inside the window")

	h.clock.Add(30 * time.Second) // 14:01 Berlin
	waitEOF(t, watch, "watch")
	exec.waitClosed(t)
	resp, b := h.get("/api/v1/namespaces/default/pods")
	checkError(t, resp, b, http.StatusForbidden, proto.CodeOutsideTimeWindow,
		"role 'oncall' applies only fri 13:00-14:01 Europe/Berlin (it is fri 14:01 there now)")
}

// When one of two allowing grants leaves its window, the impersonated
// groups of a live watch would change: the watch is closed so that it
// cannot go on with the groups of a grant that no longer allows it.
func TestTimeWindowNarrowsLiveWatch(t *testing.T) {
	up := &liveUpstream{watch: newWatchUpstream(), upgrade: newEchoUpgrade(t)}
	h := newHarness(t, up, func(c *ProxyConfig) { c.SweepInterval = 10 * time.Millisecond })
	h.peers.set(loopback, device(1, "alice@example.com",
		grant("view", "viewers"),
		restricted("admin", proto.Restrictions{TimeWindows: []proto.TimeWindow{{Start: "11:00", End: "12:01"}}}, "admins"),
	))
	watch, body := openWatch(t, h)
	defer body.Close()
	h.clock.Add(time.Minute)
	waitEOF(t, watch, "watch")
	// Closing the watch closed its connection; do not reuse it.
	body.Close()
	h.client.CloseIdleConnections()
	if resp, b := h.get("/api/v1/namespaces/default/pods"); resp.StatusCode != http.StatusOK {
		t.Errorf("after the window: %d %s, want 200 as a viewer", resp.StatusCode, b)
	}
}

func TestRateLimit(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("{}")) }),
		func(c *ProxyConfig) { c.RateLimit, c.RateBurst = 0.5, 3 })
	const path = "/api/v1/namespaces/default/pods"
	for i := range 3 {
		if resp, b := h.get(path); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, b)
		}
	}
	resp, b := h.get(path)
	checkError(t, resp, b, http.StatusTooManyRequests, proto.CodeRateLimited,
		"alice@example.com is sending requests to cluster 'prod' faster than its limit of 0.5 per second (bursts of 3). Slow down, and retry in 2 s.")
	if ra := resp.Header.Get("Retry-After"); ra != "2" {
		t.Errorf("Retry-After = %q, want 2", ra)
	}

	// Another user has a bucket of their own.
	h.peers.set(loopback, device(1, "bob@example.com", grant("view", "viewers")))
	if resp, b := h.get(path); resp.StatusCode != http.StatusOK {
		t.Fatalf("bob: %d %s", resp.StatusCode, b)
	}

	// A refused request takes no token: alice has one after 2 s.
	h.peers.set(loopback, device(1, "alice@example.com", grant("view", "viewers")))
	h.clock.Add(1500 * time.Millisecond)
	resp, _ = h.get(path)
	if ra := resp.Header.Get("Retry-After"); resp.StatusCode != http.StatusTooManyRequests || ra != "1" {
		t.Errorf("after 1.5 s: %d Retry-After %q, want 429 and 1 (0.5 s rounded up)", resp.StatusCode, ra)
	}
	h.clock.Add(500 * time.Millisecond)
	if resp, b := h.get(path); resp.StatusCode != http.StatusOK {
		t.Errorf("after 2 s: %d %s", resp.StatusCode, b)
	}
}

// A watch takes one token when it starts, however long it lives.
func TestRateLimitStreamsCountOnce(t *testing.T) {
	up := &liveUpstream{watch: newWatchUpstream(), upgrade: newEchoUpgrade(t)}
	h := newHarness(t, up, func(c *ProxyConfig) {
		c.RateLimit, c.RateBurst = 0.001, 2
		c.SweepInterval = time.Millisecond
	})
	_, body := openWatch(t, h)
	defer body.Close()
	h.proxy.Reevaluate()
	h.proxy.Reevaluate()
	if resp, b := h.get("/api/v1/namespaces/default/pods"); resp.StatusCode != http.StatusOK {
		t.Fatalf("second request: %d %s", resp.StatusCode, b)
	}
	if resp, _ := h.get("/api/v1/namespaces/default/pods"); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third request: %d, want 429", resp.StatusCode)
	}
}

func TestRateLimitOff(t *testing.T) {
	for _, c := range []struct {
		limit rate.Limit
		burst int
	}{{-1, 0}, {0, -1}, {rate.Inf, 0}} {
		if l := newLimiters(c.limit, c.burst); l != nil {
			t.Errorf("newLimiters(%v, %d) = %+v, want nil (off)", c.limit, c.burst, l)
		}
	}
	l := newLimiters(0, 0)
	if l == nil || l.limit != DefaultRateLimit || l.burst != DefaultRateBurst {
		t.Errorf("newLimiters(0, 0) = %+v, want the defaults", l)
	}
}

// Buckets are evicted once full again, and not before: eviction never
// hands a user fresh tokens early.
func TestLimiterEviction(t *testing.T) {
	l := newLimiters(10, 5) // full again 500ms after the last token
	for i := range 1000 {
		if _, ok := l.take(fmt.Sprint("user", i), t0); !ok {
			t.Fatal("first request refused")
		}
	}
	for range 4 {
		l.take("user0", t0)
	}
	if _, ok := l.take("user0", t0); ok {
		t.Fatal("user0 not limited after its burst")
	}
	l.evict(t0.Add(499 * time.Millisecond))
	if n := l.len(); n != 1000 {
		t.Fatalf("%d buckets after evicting at 499ms, want 1000", n)
	}
	l.evict(t0.Add(500 * time.Millisecond))
	if n := l.len(); n != 0 {
		t.Fatalf("%d buckets after evicting at 500ms, want 0", n)
	}
}

func TestRetryAfterRoundsUp(t *testing.T) {
	p := &Proxy{cluster: "prod", limits: newLimiters(1, 1)}
	for _, tt := range []struct {
		wait time.Duration
		want int
	}{{time.Millisecond, 1}, {time.Second, 1}, {1001 * time.Millisecond, 2}, {0, 1}} {
		if d := p.rateLimited("alice", tt.wait); d.retryAfter != tt.want || d.status != http.StatusTooManyRequests {
			t.Errorf("wait %v: Retry-After %s, status %d; want %d, 429", tt.wait, strconv.Itoa(d.retryAfter), d.status, tt.want)
		}
	}
}
