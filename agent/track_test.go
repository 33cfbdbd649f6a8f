package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// liveUpstream serves watches (GET) and upgrades (exec) at once.
type liveUpstream struct {
	watch   *watchUpstream
	upgrade *echoUpgrade
}

func (u *liveUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") != "" {
		u.upgrade.ServeHTTP(w, r)
		return
	}
	u.watch.ServeHTTP(w, r)
}

// waitEOF fails unless reading br ends within a few seconds.
func waitEOF(t *testing.T, br *bufio.Reader, what string) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, br)
		done <- err
	}()
	testkit.Recv(t, done, what+" to close")
}

func TestRevocation(t *testing.T) {
	tests := []struct {
		name   string
		change func(h *harness)
		// revoke makes the change take effect.
		revoke func(h *harness) int
		// after is the status of a new request after the change.
		after int
	}{
		{
			name:   "peer removed",
			change: func(h *harness) { h.peers.remove(loopback) },
			revoke: (*harness).reevaluate,
			after:  403,
		},
		{
			name:   "address taken by another peer",
			change: func(h *harness) { h.peers.set(loopback, device(2, "bob@example.com", grant("dev", "developers"))) },
			revoke: (*harness).reevaluate,
			after:  200,
		},
		{
			name:   "roles removed",
			change: func(h *harness) { h.peers.set(loopback, device(1, "alice@example.com")) },
			revoke: (*harness).reevaluate,
			after:  403,
		},
		{
			name: "role changed",
			change: func(h *harness) {
				h.peers.set(loopback, device(1, "alice@example.com", grant("view", "viewers")))
			},
			revoke: (*harness).reevaluate,
			after:  200,
		},
		{
			name: "grant expired",
			change: func(h *harness) {
				p := device(1, "alice@example.com", grant("dev", "developers", "viewers"), grant("view", "viewers"))
				for i := range p.Identity.Roles {
					p.Identity.Roles[i].Expires = at(time.Hour)
				}
				h.peers.set(loopback, p)
				h.clock.Add(time.Hour)
			},
			revoke: (*harness).reevaluate,
			after:  403,
		},
		{
			name:   "closed by key",
			change: func(h *harness) {},
			revoke: func(h *harness) int { return h.proxy.ClosePeer(proto.Key{1}) },
			after:  200,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := &liveUpstream{watch: newWatchUpstream(), upgrade: newEchoUpgrade(t)}
			h := newHarness(t, up, func(c *ProxyConfig) { c.SweepInterval = time.Hour })
			watch, body := openWatch(t, h)
			defer body.Close()
			exec := openUpgrade(t, h, "SPDY/3.1")

			tt.change(h)
			if n := tt.revoke(h); n == 0 {
				t.Errorf("revocation closed nothing")
			}
			waitEOF(t, watch, "watch")
			exec.waitClosed(t)
			testkit.Recv(t, up.watch.ended, "upstream watch end")
			testkit.Recv(t, up.upgrade.ended, "upstream exec end")

			// A new request after the change is decided anew.
			if resp, _ := h.get("/api/v1/pods"); resp.StatusCode != tt.after {
				t.Errorf("request after the change: status %d, want %d", resp.StatusCode, tt.after)
			}
		})
	}
}

func (h *harness) reevaluate() int { return h.proxy.Reevaluate() }

// The sweep closes streams whose session or grant expired by the proxy's
// clock, with no map change and no Reevaluate call.
func TestExpirySweep(t *testing.T) {
	tests := []struct {
		name   string
		expire func(p *proto.Peer)
	}{
		{"session", func(p *proto.Peer) { p.Identity.Expires = t0.Add(time.Minute) }},
		{"grant", func(p *proto.Peer) {
			for i := range p.Identity.Roles {
				p.Identity.Roles[i].Expires = at(time.Minute)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := &liveUpstream{watch: newWatchUpstream(), upgrade: newEchoUpgrade(t)}
			h := newHarness(t, up, func(c *ProxyConfig) { c.SweepInterval = 10 * time.Millisecond })
			p := device(1, "alice@example.com", grant("view", "viewers"))
			tt.expire(&p)
			h.peers.set(loopback, p)

			watch, body := openWatch(t, h)
			defer body.Close()
			exec := openUpgrade(t, h, "websocket")
			h.clock.Add(30 * time.Second)
			exec.echo(t, "still allowed")

			h.clock.Add(30 * time.Second)
			waitEOF(t, watch, "watch")
			exec.waitClosed(t)
			resp, body2 := h.get("/api/v1/pods")
			checkError(t, resp, body2, http.StatusForbidden, proto.CodeAccessExpired, "expired")
		})
	}
}

// A request that is denied while the upstream has not answered yet gets
// the reason, not a dropped connection.
func TestRevokedBeforeAnswer(t *testing.T) {
	arrived := make(chan struct{}, 1)
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done()
	}), func(c *ProxyConfig) { c.SweepInterval = time.Hour })
	go func() {
		testkit.Recv(t, arrived, "request upstream")
		h.peers.set(loopback, device(1, "alice@example.com"))
		h.proxy.Reevaluate()
	}()
	resp, body := h.get("/api/v1/namespaces/default/pods/slow")
	checkError(t, resp, body, http.StatusForbidden, proto.CodeNoRoleAssignment, "has no role on cluster 'prod'")
}

// A connection belongs to the peer of its first request.
func TestConnPinnedToPeer(t *testing.T) {
	h := newHarness(t, make(recorder, 4))
	c := h.dial()
	resp := c.do(t, "GET", "/api/v1/pods", "")
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("first request: %d", resp.StatusCode)
	}
	h.peers.set(loopback, device(2, "bob@example.com", grant("admin", "system:masters")))
	resp = c.do(t, "GET", "/api/v1/pods", "")
	body, _ := io.ReadAll(resp.Body)
	checkError(t, resp, string(body), http.StatusForbidden, proto.CodeUnknownPeer, "another device")
	c.waitClosed(t)
}

// Reevaluate closes idle keep-alive connections whose peer is gone.
func TestIdleConnClosed(t *testing.T) {
	h := newHarness(t, make(recorder, 4), func(c *ProxyConfig) { c.SweepInterval = time.Hour })
	c := h.dial()
	resp := c.do(t, "GET", "/api/v1/pods", "")
	io.Copy(io.Discard, resp.Body)
	h.peers.remove(loopback)
	// The request itself may still be finishing; the connection must go.
	if n := h.proxy.Reevaluate(); n == 0 {
		t.Errorf("Reevaluate closed nothing")
	}
	c.waitClosed(t)
}

func TestClose(t *testing.T) {
	up := &liveUpstream{watch: newWatchUpstream(), upgrade: newEchoUpgrade(t)}
	h := newHarness(t, up)
	watch, body := openWatch(t, h)
	defer body.Close()
	exec := openUpgrade(t, h, "SPDY/3.1")
	if err := h.proxy.Close(); err != nil {
		t.Fatal(err)
	}
	waitEOF(t, watch, "watch")
	exec.waitClosed(t)
	_, err := net.DialTimeout("tcp", h.addr, time.Second)
	if err == nil {
		t.Errorf("listener still accepts after Close")
	}
	if err := h.proxy.ServeTLS(&net.TCPListener{}, tlsCertOrFatal(t)); !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("ServeTLS after Close = %v, want http.ErrServerClosed", err)
	}
	// Close does not wait for handlers: the upgraded stream's handler
	// logs once it has seen its connection close.
	testkit.WaitFor(t, "a log line for the upgraded stream", func() bool {
		return strings.Contains(h.logs.String(), "status=101")
	})
}

func tlsCertOrFatal(t *testing.T) tls.Certificate {
	t.Helper()
	c, err := proxyCert()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestShutdownDrains: Shutdown stops accepting at once, waits for open
// streams while the drain lasts, then cuts what is left.
func TestShutdownDrains(t *testing.T) {
	up := &liveUpstream{watch: newWatchUpstream(), upgrade: newEchoUpgrade(t)}
	h := newHarness(t, up)
	watch, body := openWatch(t, h)
	defer body.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.proxy.Shutdown(ctx) }()
	// New connections are refused while the watch is still open.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", h.addr, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepts during Shutdown")
		}
		runtime.Gosched()
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a stream still open and the drain not over", err)
	default:
	}
	cancel() // the drain ends: what is left is cut
	waitEOF(t, watch, "watch")
	testkit.Recv(t, done, "Shutdown to return")
}
