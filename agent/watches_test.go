package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// crowdWatch is one watch held open through the proxy by one of many
// users, each user at its own loopback address, each watch on its own
// connection, as separate kubectl processes open them.
type crowdWatch struct {
	user   int
	body   io.Closer
	ended  chan struct{} // closed when the body ends
	cancel context.CancelFunc
}

// crowdAddr is user i's loopback address (127.0.1.0/24 and up).
func crowdAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, 0, byte(1 + i/250), byte(1 + i%250)})
}

// openCrowdWatches maps users devices at their own addresses and opens
// perUser watches for each through h, each on its own connection, with
// its first event read. Each watch's body is drained until it ends.
func openCrowdWatches(tb testing.TB, h *harness, users, perUser int) []*crowdWatch {
	tb.Helper()
	for i := range users {
		h.peers.set(crowdAddr(i), device(byte(10+i), fmt.Sprintf("user-%03d@example.com", i), grant("view", "viewers")))
	}
	var ws []*crowdWatch
	for i := range users {
		for range perUser {
			ws = append(ws, openCrowdWatch(tb, h, i))
		}
	}
	return ws
}

func openCrowdWatch(tb testing.TB, h *harness, user int) *crowdWatch {
	tb.Helper()
	local := &net.TCPAddr{IP: crowdAddr(user).AsSlice()}
	tr := &http.Transport{
		TLSClientConfig:   h.tlsConf.Clone(),
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: local}
			return d.DialContext(ctx, "tcp", h.addr)
		},
	}
	tb.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", h.url("/api/v1/namespaces/default/pods?watch=true"), nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("user %d: watch status %d", user, resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	if l, err := br.ReadString('\n'); err != nil || l != `{"type":"ADDED"}`+"\n" {
		tb.Fatalf("user %d: first watch event %q, %v", user, l, err)
	}
	w := &crowdWatch{user: user, body: resp.Body, ended: make(chan struct{}), cancel: cancel}
	go func() {
		io.Copy(io.Discard, br)
		close(w.ended)
	}()
	tb.Cleanup(func() { resp.Body.Close() })
	return w
}

// TestRevocationAmongManyWatches: with 100 users holding 10 watches each
// through one agent, revoking one user cuts exactly that user's watches,
// within a second, and leaves the 990 others open.
func TestRevocationAmongManyWatches(t *testing.T) {
	const users, perUser, victim = 100, 10, 42
	up := newWatchUpstream()
	up.ended = make(chan struct{}, users*perUser)
	h := newHarness(t, up, func(c *ProxyConfig) { c.SweepInterval = time.Hour })
	ws := openCrowdWatches(t, h, users, perUser)

	start := time.Now()
	h.peers.remove(crowdAddr(victim))
	n := h.proxy.Reevaluate()
	// Each watch is one request on one connection: both are closed.
	if n != 2*perUser {
		t.Errorf("revoking one user closed %d requests and connections, want %d", n, 2*perUser)
	}
	deadline := time.NewTimer(time.Second - time.Since(start))
	defer deadline.Stop()
	for _, w := range ws {
		if w.user != victim {
			continue
		}
		select {
		case <-w.ended:
		case <-deadline.C:
			t.Fatalf("a watch of the revoked user was still open %v after the revocation", time.Second)
		}
	}
	for range perUser {
		testkit.Recv(t, up.ended, "the revoked user's watch to end upstream")
	}
	for _, w := range ws {
		select {
		case <-w.ended:
			if w.user != victim {
				t.Fatalf("user %d's watch ended with another user's revocation", w.user)
			}
		default:
		}
	}
	// The others still answer: a new request of theirs passes.
	if got := h.proxy.Reevaluate(); got != 0 {
		t.Errorf("a second reevaluation closed %d more", got)
	}
}

// BenchmarkIdleWatches holds 1,000 watches from 100 users open through
// the proxy (each on its own connection) and reports the memory they
// hold and the CPU the process spends while they idle for a second. The
// fake apiserver and the clients share the process, so both are upper
// bounds of the proxy's own share.
func BenchmarkIdleWatches(b *testing.B) {
	const users, perUser = 100, 10
	for b.Loop() {
		up := newWatchUpstream()
		up.ended = make(chan struct{}, users*perUser)
		h := newHarness(b, up, func(c *ProxyConfig) { c.RateLimit = -1 })
		before := memInUse()
		ws := openCrowdWatches(b, h, users, perUser)
		after := memInUse()
		cpu0 := testkit.CPUTime()
		idle := time.Now()
		time.Sleep(time.Second) // the idle period measured, not a wait for a condition
		cpu := testkit.CPUTime() - cpu0
		b.ReportMetric(float64(after-before)/float64(len(ws))/1024, "KiB/watch")
		b.ReportMetric(100*cpu.Seconds()/time.Since(idle).Seconds(), "idle-cpu-%")
		var wg sync.WaitGroup
		for _, w := range ws {
			wg.Go(func() { w.cancel(); <-w.ended })
		}
		wg.Wait()
	}
}

// memInUse is the heap and stacks in use after a collection.
func memInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse + ms.StackInuse)
}

// TestReevaluateCountsAnEndingStreamOnce: a request that an earlier
// reevaluation killed stays tracked until its handler returns; a second
// reevaluation meanwhile neither kills nor counts it again.
func TestReevaluateCountsAnEndingStreamOnce(t *testing.T) {
	h := newHarness(t, newWatchUpstream(), func(c *ProxyConfig) { c.SweepInterval = time.Hour })
	gone := device(99, "bob@example.com", grant("view", "viewers"))
	ctx, cancel := context.WithCancelCause(context.Background())
	t.Cleanup(func() { cancel(nil) })
	s := &stream{key: gone.Key, addr: crowdAddr(7), ctx: ctx, cancel: cancel}
	if d := h.proxy.track(s); d != nil {
		t.Fatalf("track: %v", d)
	}
	t.Cleanup(func() { h.proxy.untrack(s) })

	// bob's device is not in the map: the first pass ends his request.
	if n := h.proxy.Reevaluate(); n != 1 {
		t.Fatalf("first reevaluation closed %d, want 1", n)
	}
	if context.Cause(ctx) == nil {
		t.Fatal("the request was not cancelled")
	}
	if n := h.proxy.Reevaluate(); n != 0 {
		t.Errorf("second reevaluation closed %d, want 0: the request was already ending", n)
	}
}

// TestSweepSkipsUndecidedStreams: a pass decides a stream afresh only
// when its decision may have changed: a new generation (Reevaluate), a
// new identity of its peer, the clock past an expiry, or a grant with
// time windows. Otherwise the stream's last check stands.
func TestSweepSkipsUndecidedStreams(t *testing.T) {
	h := newHarness(t, newWatchUpstream(), func(c *ProxyConfig) { c.SweepInterval = time.Hour })
	alice := func(roles ...proto.RoleGrant) proto.Peer { return device(1, "alice@example.com", roles...) }
	always := restricted("view", proto.Restrictions{TimeWindows: []proto.TimeWindow{{Start: "00:00", End: "23:59"}}}, "viewers")
	h.peers.set(loopback, alice(grant("view", "viewers")))
	_, body := openWatch(t, h)
	defer body.Close()
	h.proxy.mu.Lock()
	var s *stream
	for _, pl := range h.proxy.live {
		for st := range pl.streams {
			s = st
		}
	}
	h.proxy.mu.Unlock()
	if s == nil {
		t.Fatal("the watch is not tracked")
	}
	if n := h.proxy.reevaluate(); n != 0 || s.checked.Load() == nil {
		t.Fatalf("first pass closed %d, checked %v", n, s.checked.Load())
	}

	tests := []struct {
		name   string
		change func()
		afresh bool
	}{
		{"nothing changed", func() {}, false},
		{"an hour on, the session a day from expiry", func() { h.clock.Add(time.Hour) }, false},
		{"the peer's identity replaced, the same", func() { h.peers.set(loopback, alice(grant("view", "viewers"))) }, true},
		{"then nothing", func() {}, false},
		{"a change announced", func() { h.proxy.gen.Add(1) }, true},
		{"a second grant, expiring in a minute", func() {
			g := grant("view", "viewers")
			exp := h.clock.Now().Add(time.Minute)
			g.Expires = &exp
			h.peers.set(loopback, alice(grant("view", "viewers"), g))
		}, true},
		{"half a minute on", func() { h.clock.Add(30 * time.Second) }, false},
		{"past that grant's expiry", func() { h.clock.Add(time.Minute) }, true},
		{"a grant with time windows", func() { h.peers.set(loopback, alice(always)) }, true},
		{"windows, nothing else changed", func() {}, true},
	}
	for _, tt := range tests {
		before := s.checked.Load()
		tt.change()
		n := h.proxy.reevaluate()
		if afresh := s.checked.Load() != before || n > 0; afresh != tt.afresh {
			t.Errorf("%s: decided afresh %v, want %v", tt.name, afresh, tt.afresh)
		}
	}
}

// BenchmarkSweep is one pass of the sweep over 1,000 live watches of 100
// users, each with a grant restricted to reading: what the agent spends
// twice a second while they idle.
func BenchmarkSweep(b *testing.B) {
	const users, perUser = 100, 10
	h := newHarness(b, newWatchUpstream(), func(c *ProxyConfig) { c.SweepInterval = time.Hour })
	reader := restricted("reader", proto.Restrictions{Verbs: []string{"get", "list", "watch"}, Namespaces: []string{"default", "staging"}}, "readers")
	req := httptest.NewRequest("GET", "/api/v1/namespaces/default/configmaps?watch=true", nil)
	info := parseRequestInfo(req)
	for u := range users {
		peer := device(byte(u+1), fmt.Sprintf("user-%03d@example.com", u), reader)
		h.peers.set(crowdAddr(u), peer)
		imp, d := authorize("prod", peer, info, h.clock.Now())
		if d != nil {
			b.Fatal(d)
		}
		for range perUser {
			ctx, cancel := context.WithCancelCause(context.Background())
			s := &stream{key: peer.Key, addr: crowdAddr(u), ctx: ctx, cancel: cancel, imp: imp, info: info}
			if d := h.proxy.track(s); d != nil {
				b.Fatal(d)
			}
			b.Cleanup(func() { h.proxy.untrack(s); cancel(nil) })
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if n := h.proxy.reevaluate(); n != 0 {
			b.Fatalf("a pass closed %d", n)
		}
	}
}
