package node

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// fakeNet carries datagrams between fakeSocks, unless blocked.
type fakeNet struct {
	mu      sync.Mutex
	socks   map[netip.AddrPort]*fakeSock
	blocked atomic.Bool
}

type datagram struct {
	b    []byte
	from netip.AddrPort
}

// fakeSock is a conn.Bind on a fakeNet at addr.
type fakeSock struct {
	net  *fakeNet
	addr netip.AddrPort
	in   chan datagram
	done chan struct{}
}

func (n *fakeNet) sock(addr string) *fakeSock {
	s := &fakeSock{net: n, addr: netip.MustParseAddrPort(addr), in: make(chan datagram, 256), done: make(chan struct{})}
	n.mu.Lock()
	if n.socks == nil {
		n.socks = map[netip.AddrPort]*fakeSock{}
	}
	n.socks[s.addr] = s
	n.mu.Unlock()
	return s
}

func (s *fakeSock) Open(uint16) ([]conn.ReceiveFunc, uint16, error) {
	fn := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		select {
		case d := <-s.in:
			sizes[0] = copy(bufs[0], d.b)
			eps[0] = &conn.StdNetEndpoint{AddrPort: d.from}
			return 1, nil
		case <-s.done:
			return 0, net.ErrClosed
		}
	}
	return []conn.ReceiveFunc{fn}, s.addr.Port(), nil
}
func (s *fakeSock) Close() error {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	return nil
}
func (s *fakeSock) SetMark(uint32) error                        { return nil }
func (s *fakeSock) BatchSize() int                              { return 1 }
func (s *fakeSock) ParseEndpoint(string) (conn.Endpoint, error) { return nil, net.ErrClosed }
func (s *fakeSock) Send(bufs [][]byte, ep conn.Endpoint) error {
	if s.net.blocked.Load() {
		return nil // dropped on the way, as UDP is
	}
	s.net.mu.Lock()
	dst := s.net.socks[ep.(*conn.StdNetEndpoint).AddrPort]
	s.net.mu.Unlock()
	if dst == nil {
		return nil
	}
	for _, b := range bufs {
		select {
		case dst.in <- datagram{b: append([]byte(nil), b...), from: s.addr}:
		default:
		}
	}
	return nil
}

// fakeRelay is a relay path between Binds, always up.
type fakeRelay struct {
	self  proto.Key
	peers map[proto.Key]*Bind
	sent  atomic.Uint64
}

func (r *fakeRelay) up() bool { return true }
func (r *fakeRelay) send(dst proto.Key, pkt []byte) bool {
	b := r.peers[dst]
	if b == nil {
		return false
	}
	r.sent.Add(1)
	buf := getPacketBuf(len(pkt))
	copy(*buf, pkt)
	b.deliverRelay(r.self, buf, 0, len(pkt))
	return true
}

// received is a datagram wireguard-go would have received.
type received struct {
	b  []byte
	ep conn.Endpoint
}

// openFake opens b and pumps its receive functions as wireguard-go would,
// into the returned channel.
func openFake(t *testing.T, b *Bind) <-chan received {
	t.Helper()
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	out := make(chan received, 256)
	for _, fn := range fns {
		go func() {
			bufs := [][]byte{make([]byte, 1500)}
			sizes, eps := make([]int, 1), make([]conn.Endpoint, 1)
			for {
				n, err := fn(bufs, sizes, eps)
				if err != nil {
					return
				}
				for i := range n {
					if sizes[i] > 0 {
						out <- received{b: append([]byte(nil), bufs[i][:sizes[i]]...), ep: eps[i]}
					}
				}
			}
		}()
	}
	return out
}

func waitPath(t *testing.T, b *Bind, key proto.Key, want Path) PathStatus {
	t.Helper()
	var ps PathStatus
	testkit.WaitFor(t, fmt.Sprintf("the path to %v to be %v", key.ShortString(), want), func() bool {
		var ok bool
		ps, ok = b.PathStatus(key)
		return ok && ps.Path == want
	})
	return ps
}

func TestBindPathDirectRelayDirect(t *testing.T) {
	var fnet fakeNet
	a, b := NewBind(), NewBind()
	keyA, keyB := keyBind(t, a), keyBind(t, b)
	a.udp, b.udp = fnet.sock("192.0.2.1:1000"), fnet.sock("198.51.100.2:2000")
	for _, x := range []*Bind{a, b} {
		x.ProbeInterval, x.DirectProbeInterval, x.DirectTimeout = 50*time.Millisecond, 20*time.Millisecond, 200*time.Millisecond
	}
	relayA := &fakeRelay{self: keyA, peers: map[proto.Key]*Bind{keyB: b}}
	relayB := &fakeRelay{self: keyB, peers: map[proto.Key]*Bind{keyA: a}}
	a.setRelay(relayA)
	b.setRelay(relayB)
	inA, inB := openFake(t, a), openFake(t, b)

	// A knows B's address; B's map gave it none for A (relay-only), so B
	// learns A's address from A's pings.
	epB, err := a.ParseEndpoint(FormatEndpoint(keyB, []netip.AddrPort{netip.MustParseAddrPort("198.51.100.2:2000")}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ParseEndpoint(keyA.Hex() + "@"); err != nil {
		t.Fatal(err)
	}
	wg := []byte{4, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28}

	sendAndReceive := func(want Path) {
		t.Helper()
		before := a.Stats(want).TxPackets
		if err := a.Send([][]byte{wg}, epB); err != nil {
			t.Fatal(err)
		}
		if got := a.Stats(want).TxPackets - before; got != 1 {
			t.Fatalf("sent %d packets on %v, want 1", got, want)
		}
		select {
		case r := <-inB:
			if string(r.b) != string(wg) {
				t.Fatalf("B received %x, want the WireGuard datagram", r.b)
			}
			if e, ok := r.ep.(*Endpoint); want == PathRelay && (!ok || e.Key() != keyA) {
				t.Fatalf("relayed datagram reported with endpoint %v, want A's key", r.ep)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("B received nothing over %v", want)
		}
	}

	ps := waitPath(t, a, keyB, PathDirect)
	if ps.Addr.String() != "198.51.100.2:2000" || ps.RTT <= 0 {
		t.Errorf("direct path = %+v", ps)
	}
	// B learned A's address from A's pings and found the way back.
	waitPath(t, b, keyA, PathDirect)
	sendAndReceive(PathDirect)

	// UDP stops: after the timeout both fall back to the relay, and
	// WireGuard datagrams keep flowing.
	fnet.blocked.Store(true)
	waitPath(t, a, keyB, PathRelay)
	sendAndReceive(PathRelay)
	// Probes cross the relay too, for the relayed latency.
	testkit.WaitFor(t, "an RTT measured over the relay", func() bool {
		ps, _ := a.PathStatus(keyB)
		return ps.RTT > 0
	})

	// UDP is back: probing finds the direct path again.
	fnet.blocked.Store(false)
	waitPath(t, a, keyB, PathDirect)
	sendAndReceive(PathDirect)

	// Probes never reach wireguard-go.
	for len(inA) > 0 {
		if r := <-inA; proto.IsProbe(r.b) {
			t.Fatal("a probe reached the receive functions' caller")
		}
	}
}

// keyBind gives b a fresh private key and returns its public key.
func keyBind(t testing.TB, b *Bind) proto.Key {
	t.Helper()
	k := testkit.WireGuardKey(t)
	if err := b.setKey(proto.Key(k)); err != nil {
		t.Fatal(err)
	}
	if b.self != proto.Key(k.PublicKey()) {
		t.Fatalf("Bind key %s, want WireGuard's public key %s", b.self.ShortString(), proto.Key(k.PublicKey()).ShortString())
	}
	return b.self
}

// TestRelayUntilDirectIsConfirmed: until a pong confirms a direct path,
// packets take the relay, so the first handshake gets through behind any
// NAT at once; then they take the direct path.
func TestRelayUntilDirectIsConfirmed(t *testing.T) {
	var fnet fakeNet
	a, b := NewBind(), NewBind()
	keyA, keyB := keyBind(t, a), keyBind(t, b)
	a.udp, b.udp = fnet.sock("192.0.2.1:1000"), fnet.sock("198.51.100.2:2000")
	addrB := netip.MustParseAddrPort("198.51.100.2:2000")
	epB, err := a.ParseEndpoint(FormatEndpoint(keyB, []netip.AddrPort{addrB}))
	if err != nil {
		t.Fatal(err)
	}
	wg := []byte{1, 0, 0, 0, 9, 9, 9, 9}
	sent := func() (direct, relay uint64) {
		t.Helper()
		d0, r0 := a.Stats(PathDirect).TxPackets, a.Stats(PathRelay).TxPackets
		if err := a.Send([][]byte{wg}, epB); err != nil {
			t.Fatal(err)
		}
		return a.Stats(PathDirect).TxPackets - d0, a.Stats(PathRelay).TxPackets - r0
	}
	if d, r := sent(); d != 1 || r != 0 {
		t.Errorf("no relay connected: sent %d direct, %d relayed; want 1 and 0", d, r)
	}
	a.setRelay(&fakeRelay{self: keyA, peers: map[proto.Key]*Bind{keyB: b}})
	if d, r := sent(); d != 0 || r != 1 {
		t.Errorf("direct not confirmed: sent %d direct, %d relayed; want 0 and 1", d, r)
	}
	pp := a.peers.paths[keyB]
	pp.mu.Lock()
	pp.pending[[12]byte{5}] = pendingPing{to: addrB, at: time.Now()}
	pp.mu.Unlock()
	if !pp.pong([12]byte{5}, addrB, time.Now()) {
		t.Fatal("the pong did not confirm the direct path")
	}
	if d, r := sent(); d != 1 || r != 0 {
		t.Errorf("direct confirmed: sent %d direct, %d relayed; want 1 and 0", d, r)
	}
}
