package node

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// link carries UDP between two test nodes through two loopback sockets of
// its own, so a test sees and orders the datagrams between them. Each node
// knows the other by the link's socket on its side: a's map gives b's
// endpoint as toB, b's map gives a's as toA, and a datagram b sends to toA
// reaches a from toB (the address a knows b by), and the other way round.
type link struct {
	a, b     *testNode
	toA, toB *net.UDPConn
	ways     [2]way // 0: toward a, 1: toward b
	wg       sync.WaitGroup

	mu       sync.Mutex
	crossing bool        // hold initiations until both ways have one
	noProbes bool        // drop probes, so no direct path is confirmed
	held     [2][][]byte // initiations held, by way
	inits    [2]int      // initiations delivered, by way
}

// way is one direction of a link: what arrives at in goes out of out to dst.
type way struct {
	in, out *net.UDPConn
	dst     *net.UDPAddr
}

// newLink starts a link between a and b; it stops when the test ends.
func newLink(t *testing.T, a, b *testNode) *link {
	t.Helper()
	l := &link{a: a, b: b}
	for _, c := range []**net.UDPConn{&l.toA, &l.toB} {
		uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		*c = uc
	}
	t.Cleanup(func() {
		l.toA.Close()
		l.toB.Close()
		l.wg.Wait()
	})
	at := func(n *testNode) *net.UDPAddr {
		return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(n.ListenPort())}
	}
	l.ways[0] = way{in: l.toA, out: l.toB, dst: at(a)}
	l.ways[1] = way{in: l.toB, out: l.toA, dst: at(b)}
	for dir := range l.ways {
		l.wg.Go(func() { l.pump(dir) })
	}
	return l
}

// pump forwards the datagrams of one way until the link closes.
func (l *link) pump(dir int) {
	w := &l.ways[dir]
	buf := make([]byte, 2048)
	for {
		n, err := w.in.Read(buf)
		if err != nil {
			return
		}
		pkt := append([]byte(nil), buf[:n]...)
		l.mu.Lock()
		drop := l.noProbes && proto.IsProbe(pkt)
		l.mu.Unlock()
		if drop {
			continue
		}
		if !isInitiation(pkt) {
			w.out.WriteToUDP(pkt, w.dst)
			continue
		}
		l.mu.Lock()
		l.held[dir] = append(l.held[dir], pkt)
		if l.crossing && (len(l.held[0]) == 0 || len(l.held[1]) == 0) {
			// Hold it until the other node has sent one too: then
			// both are on their way before either arrives, and the two
			// first handshakes cross.
			l.mu.Unlock()
			continue
		}
		l.crossing = false
		held := l.held
		l.held = [2][][]byte{}
		for d := range held {
			l.inits[d] += len(held[d])
		}
		l.mu.Unlock()
		for d := range held {
			for _, p := range held[d] {
				l.ways[d].out.WriteToUDP(p, l.ways[d].dst)
			}
		}
	}
}

// initiations reports how many handshake initiations the link delivered
// toward a (dir 0) or toward b (dir 1).
func (l *link) initiations(dir int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inits[dir]
}

// peerVia is tn as its peer sees it across l: at the link's socket on the
// peer's side.
func (tn *testNode) peerVia(ep *net.UDPConn) proto.Peer {
	p := tn.peer()
	p.Endpoints = []netip.AddrPort{ep.LocalAddr().(*net.UDPAddr).AddrPort()}
	return p
}

func (tn *testNode) applySnapshot(t testing.TB, peers ...proto.Peer) {
	t.Helper()
	self := tn.peer()
	if err := tn.Apply(proto.MapMessage{Version: 1, Snapshot: true, Self: &self, Peers: peers}); err != nil {
		t.Fatalf("apply snapshot: %v", err)
	}
}

// TestFirstHandshake: a device with traffic for an agent at the moment the
// two learn of each other gets its first answer within a handshake, in
// whichever order the map and the two first initiations arrive. A crossed
// first handshake used to stall until WireGuard's retry, 5 s, or 15 s when
// the answer to one initiation was processed while the other was.
func TestFirstHandshake(t *testing.T) {
	// firstAnswer bounds the first echo: one handshake and a TCP round
	// trip, with room for a loaded machine, and far below WireGuard's 5 s
	// retry that a stall waits for.
	const firstAnswer = 3 * time.Second
	tests := []struct {
		name string
		// run brings the two nodes' maps in and starts the device's
		// traffic (the echo, sent on echo's channel), in its own order.
		run func(t *testing.T, l *link, echo func())
	}{
		{"both initiate and the initiations cross", func(t *testing.T, l *link, echo func()) {
			l.mu.Lock()
			l.crossing = true
			l.mu.Unlock()
			l.a.applySnapshot(t, l.b.peerVia(l.toB))
			l.b.applySnapshot(t, l.a.peerVia(l.toA))
			echo()
		}},
		{"the agent's initiation arrives before the device knows it", func(t *testing.T, l *link, echo func()) {
			l.a.applySnapshot(t, l.b.peerVia(l.toB))
			testkit.WaitFor(t, "the agent's initiation at the device", func() bool { return l.initiations(1) > 0 })
			l.b.applySnapshot(t, l.a.peerVia(l.toA))
			echo()
		}},
		{"the device's initiation arrives before the agent knows it", func(t *testing.T, l *link, echo func()) {
			l.b.applySnapshot(t, l.a.peerVia(l.toA))
			echo()
			testkit.WaitFor(t, "the device's initiation at the agent", func() bool { return l.initiations(0) > 0 })
			l.a.applySnapshot(t, l.b.peerVia(l.toB))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestNode(t, addrA, addrA)
			b := newTestNode(t, addrB, addrB)
			a.kind = proto.KindAgent
			a.serveEcho(t, 80)
			l := newLink(t, a, b)
			done := make(chan error, 1)
			var start time.Time
			tt.run(t, l, func() {
				start = time.Now()
				go func() { done <- b.echo(netip.AddrPortFrom(addrA, 80), okTimeout) }()
			})
			err := testkit.Recv(t, done, "the device's first echo")
			if took := time.Since(start); err != nil || took > firstAnswer {
				t.Fatalf("first echo after %v (err %v), want an answer within %v", took.Round(time.Millisecond), err, firstAnswer)
			}
		})
	}
}

// TestHeldInitiations: an initiation from a sender wireguard-go is not
// configured with waits in the Bind until it is, or until holdInitiation
// has passed; a leader keeps the initiations that cross its own from
// wireguard-go until its own is answered, or given up after crossWait.
func TestHeldInitiations(t *testing.T) {
	var fnet fakeNet
	a, b := NewBind(), NewBind()
	keyA, _ := keyBind(t, a), keyBind(t, b)
	addrA := netip.MustParseAddrPort("192.0.2.1:1000")
	a.udp, b.udp = fnet.sock(addrA.String()), fnet.sock("198.51.100.2:2000")
	openFake(t, a)
	inB := openFake(t, b)
	toB := &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("198.51.100.2:2000")}
	initiation := func(id byte) []byte {
		pkt := make([]byte, device.MessageInitiationSize)
		pkt[0], pkt[4] = device.MessageInitiationType, id
		return pkt
	}
	held := func() int {
		b.held.Lock()
		defer b.held.Unlock()
		return len(b.held.bySrc)
	}
	noneReceived := func(what string) {
		t.Helper()
		select {
		case r := <-inB:
			t.Fatalf("%s: wireguard-go received %x", what, r.b[:8])
		case <-time.After(failTimeout):
		}
	}

	// From a stranger: held, then delivered as it came once expired.
	if err := a.udp.Send([][]byte{initiation(1)}, toB); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the initiation held", func() bool { return held() == 1 })
	b.releaseHeld(time.Now(), true)
	noneReceived("a stranger's initiation")
	b.releaseHeld(time.Now().Add(holdInitiation), false)
	if r := testkit.Recv(t, inB, "the expired initiation"); r.b[4] != 1 || r.ep.(*Endpoint).Key() != (proto.Key{}) {
		t.Fatalf("expired initiation %x from %v, want the first, keyless", r.b[:8], r.ep)
	}

	// From a peer whose endpoint is parsed but that is not ready: held
	// until peerReady.
	epA, err := b.ParseEndpoint(FormatEndpoint(keyA, []netip.AddrPort{addrA}))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.udp.Send([][]byte{initiation(2)}, toB); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the initiation held", func() bool { return held() == 1 })
	b.peerReady(keyA, true)
	b.releaseHeld(time.Now(), true)
	if r := testkit.Recv(t, inB, "the released initiation"); r.b[4] != 2 || r.ep.(*Endpoint).Key() != keyA {
		t.Fatalf("released initiation %x from %v, want the second, from A", r.b[:8], r.ep)
	}

	// b leads: once it initiated, A's initiations cross it. The crossing
	// one waits, and is dropped when A answers b's.
	response := func(to byte) []byte {
		pkt := make([]byte, device.MessageResponseSize)
		pkt[0], pkt[4], pkt[8] = device.MessageResponseType, 7, to
		return pkt
	}
	if err := b.Send([][]byte{initiation(9)}, epA); err != nil {
		t.Fatal(err)
	}
	if err := a.udp.Send([][]byte{initiation(3)}, toB); err != nil {
		t.Fatal(err)
	}
	if err := a.udp.Send([][]byte{response(9)}, toB); err != nil {
		t.Fatal(err)
	}
	if r := testkit.Recv(t, inB, "A's answer"); r.b[0] != device.MessageResponseType {
		t.Fatalf("wireguard-go received %x, want A's answer", r.b[:8])
	}
	noneReceived("a crossing initiation, b's answered")

	// Unanswered, b gives its initiation up after crossWait: wireguard-go
	// gets A's, and a late answer to b's is dropped.
	if err := b.Send([][]byte{initiation(10)}, epA); err != nil {
		t.Fatal(err)
	}
	if err := a.udp.Send([][]byte{initiation(4)}, toB); err != nil {
		t.Fatal(err)
	}
	if r := testkit.Recv(t, inB, "the crossing initiation, b's unanswered"); r.b[4] != 4 || r.ep.(*Endpoint).Key() != keyA {
		t.Fatalf("wireguard-go received %x from %v, want A's fourth initiation", r.b[:8], r.ep)
	}
	if err := a.udp.Send([][]byte{response(10)}, toB); err != nil {
		t.Fatal(err)
	}
	noneReceived("a late answer to an initiation given up")
	if n := held(); n != 0 {
		t.Fatalf("%d initiations held, want none", n)
	}

	// The Bind holds at most maxHeld, one per sender.
	for i := range maxHeld {
		if !b.hold(initiation(4), heldSrc{addr: netip.AddrPortFrom(netip.MustParseAddr("203.0.113.1"), uint16(i+1))}) {
			t.Fatalf("initiation %d not held", i)
		}
	}
	if b.hold(initiation(5), heldSrc{key: keyA}) {
		t.Error("held more than maxHeld initiations")
	}
	if !b.hold(initiation(6), heldSrc{addr: netip.MustParseAddrPort("203.0.113.1:1")}) {
		t.Error("a sender's newer initiation did not replace its held one")
	}
}

// lateRelay is a relay to one node whose connection comes up only after
// the first WireGuard datagram for it was lost, as an agent's does when
// it initiates right after it started.
type lateRelay struct {
	fakeRelay
	mu        sync.Mutex
	connected bool
}

func (r *lateRelay) send(dst proto.Key, pkt []byte) bool {
	r.mu.Lock()
	connected := r.connected
	r.connected = connected || !proto.IsProbe(pkt)
	r.mu.Unlock()
	if !connected {
		return false
	}
	return r.fakeRelay.send(dst, pkt)
}

// TestHandshakeAnsweredTheWayItCame: an agent that has just started has
// no relay connection yet and initiates on the device's direct address;
// the device, whose path to the agent is still the relay (no probe gets
// through to confirm a direct one), answers on the direct path the
// initiation came by. Into the relay, which cannot deliver to the agent
// yet, the answer was lost and the pair waited 5 s for the agent's retry.
func TestHandshakeAnsweredTheWayItCame(t *testing.T) {
	a, b := newRelayTestNode(t, addrA), newRelayTestNode(t, addrB)
	a.kind = proto.KindAgent
	a.serveEcho(t, 80)
	l := newLink(t, a, b)
	l.mu.Lock()
	l.noProbes = true
	l.mu.Unlock()
	relay := &lateRelay{fakeRelay: fakeRelay{self: b.PublicKey(), peers: map[proto.Key]*Bind{a.PublicKey(): a.bind}}}
	b.bind.setRelay(relay)

	b.applySnapshot(t, a.peerVia(l.toA))
	a.applySnapshot(t, b.peerVia(l.toB))
	testkit.WaitForWithin(t, 3*time.Second, "the agent's first handshake", func() bool {
		status, err := a.Status()
		if err != nil {
			t.Fatal(err)
		}
		return len(status.Peers) == 1 && !status.Peers[0].LastHandshake.IsZero()
	})
	// The agent's relay is up now; the device's traffic takes it.
	a.bind.setRelay(&fakeRelay{self: a.PublicKey(), peers: map[proto.Key]*Bind{b.PublicKey(): b.bind}})
	if err := b.echo(netip.AddrPortFrom(addrA, 80), okTimeout); err != nil {
		t.Fatal(err)
	}
}
