package node

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/clustral/clustral/pkg/cork"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// newRelayTestNode is newTestNode with Config.Relay set.
func newRelayTestNode(t *testing.T, addr netip.Addr) *testNode {
	t.Helper()
	return newTestNodeConfig(t, addr, addr, Config{Relay: true})
}

// linkRelay joins the nodes' Binds with a fake relay.
func linkRelay(a, b *testNode) {
	a.bind.setRelay(&fakeRelay{self: a.PublicKey(), peers: map[proto.Key]*Bind{b.PublicKey(): b.bind}})
	b.bind.setRelay(&fakeRelay{self: b.PublicKey(), peers: map[proto.Key]*Bind{a.PublicKey(): a.bind}})
}

func TestTunnelOverRelayOnly(t *testing.T) {
	a, b := newRelayTestNode(t, addrA), newRelayTestNode(t, addrB)
	linkRelay(a, b)
	// Neither knows an address of the other: the relay is the only path.
	pa, pb := a.peer(), b.peer()
	pa.Endpoints, pb.Endpoints = nil, nil
	selfA, selfB := a.peer(), b.peer()
	if err := a.Apply(proto.MapMessage{Version: 1, Snapshot: true, Self: &selfA, Peers: []proto.Peer{pb}}); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(proto.MapMessage{Version: 1, Snapshot: true, Self: &selfB, Peers: []proto.Peer{pa}}); err != nil {
		t.Fatal(err)
	}
	b.serveEcho(t, 80)
	if err := a.echo(netip.AddrPortFrom(addrB, 80), okTimeout); err != nil {
		t.Fatalf("A → B over the relay: %v", err)
	}
	status, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	if r := status.Paths[PathRelay]; r.TxPackets == 0 || r.RxPackets == 0 {
		t.Errorf("relay stats = %+v, want traffic both ways", r)
	}
	if d := status.Paths[PathDirect]; d.TxPackets != 0 || d.RxPackets != 0 {
		t.Errorf("direct stats = %+v, want none", d)
	}
	if ps, ok := a.PathStatus(b.PublicKey()); !ok || ps.Path != PathRelay {
		t.Errorf("path to B = %+v %v, want relay", ps, ok)
	}
}

func TestTunnelMovesToDirect(t *testing.T) {
	a, b := newRelayTestNode(t, addrA), newRelayTestNode(t, addrB)
	linkRelay(a, b)
	a.snapshot(t, 1, b)
	b.snapshot(t, 1, a)
	b.serveEcho(t, 80)
	testkit.WaitFor(t, "a measured direct path to B", func() bool {
		ps, _ := a.PathStatus(b.PublicKey())
		return ps.Path == PathDirect && ps.Addr.IsValid() && ps.RTT > 0
	})
	before := a.bind.Stats(PathRelay).TxPackets
	if err := a.echo(netip.AddrPortFrom(addrB, 80), okTimeout); err != nil {
		t.Fatalf("A → B: %v", err)
	}
	if got := a.bind.Stats(PathRelay).TxPackets - before; got != 0 {
		t.Errorf("%d packets took the relay once the direct path worked", got)
	}
}

// TestRelayUpgradeOverTLSWithHTTP2: the relay's connection is an HTTP/1.1
// upgrade even when the client's transport has spoken HTTP/2 to a TLS
// front end that offers it (and so lists "h2" in its ALPN protocols).
func TestRelayUpgradeOverTLSWithHTTP2(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != proto.RelayUpgrade {
			return // the client's other calls
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack %s: %v", r.Proto, err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + proto.RelayUpgrade + "\r\n\r\n")
		brw.Flush()
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	hc := srv.Client()
	resp, err := hc.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("the client's own call spoke %s, want HTTP/2", resp.Proto)
	}
	c, err := newRelayClient(RelayConfig{BaseURL: srv.URL, Token: "node-token", Client: hc}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var slot atomic.Pointer[cork.Conn]
	rwc, err := c.client.DialRelay(context.WithValue(t.Context(), corkSlot{}, &slot))
	if err != nil {
		t.Fatalf("relay upgrade after HTTP/2: %v", err)
	}
	rwc.Close()
	// The upgrade had a connection of its own, dialled with a
	// cork.Conn beneath its TLS for the relay's writer.
	if slot.Load() == nil {
		t.Error("the relay connection was not dialled as a cork.Conn")
	}
}
