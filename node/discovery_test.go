package node

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

// fakeSTUN answers every ping with observed, as the coordinator's
// discovery service answers with the address a ping came from, and counts
// the pings.
func fakeSTUN(t *testing.T, observed netip.AddrPort) (addr string, pings *atomic.Int64) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pings = new(atomic.Int64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			p, ok := proto.ParseProbe(buf[:n])
			if !ok || p.Type != proto.ProbePing {
				continue
			}
			pings.Add(1)
			pong := proto.Probe{Type: proto.ProbePong, TxID: p.TxID, Observed: observed}
			b, _ := pong.AppendBinary(nil)
			pc.WriteTo(b, from)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc.LocalAddr().String(), pings
}

func TestRunDiscoveryPublishesObservedEndpoint(t *testing.T) {
	n := newTestNode(t, netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("100.64.0.1"))
	observed := netip.MustParseAddrPort("203.0.113.7:41641")
	stun, pings := fakeSTUN(t, observed)

	var (
		mu        sync.Mutex
		published [][]netip.AddrPort
	)
	publish := func(_ context.Context, eps []netip.AddrPort) error {
		mu.Lock()
		defer mu.Unlock()
		published = append(published, eps)
		if len(published) == 1 {
			return errors.New("coordinator unavailable")
		}
		return nil
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(published)
	}
	eps := NewPublishedEndpoints(n.ListenPort)
	if got := eps.List(); len(got) > 0 && got[0] == observed {
		t.Fatalf("List before discovery = %v, already holds the observed endpoint", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.RunDiscovery(ctx, DiscoveryConfig{Server: stun, Endpoints: eps, Publish: publish, Interval: 5 * time.Millisecond, Logger: testLogger(t)})
	}()
	defer func() {
		cancel()
		<-done
	}()

	// The first publication fails, so the next round publishes again.
	waitFor(t, "two publications", func() bool { return count() == 2 })
	if got := eps.List(); len(got) == 0 || got[0] != observed {
		t.Fatalf("List = %v, want the observed endpoint %v first", got, observed)
	}
	mu.Lock()
	last := published[1]
	mu.Unlock()
	if len(last) == 0 || last[0] != observed {
		t.Errorf("published %v, want the observed endpoint %v first", last, observed)
	}
	// An unchanged observation is not published again.
	after := pings.Load()
	waitFor(t, "three more discovery rounds", func() bool { return pings.Load() >= after+3 })
	if c := count(); c != 2 {
		t.Errorf("%d publications after the observation stayed the same, want 2", c)
	}
}
