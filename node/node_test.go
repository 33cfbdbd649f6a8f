package node

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// testNode is a Node on a stock netstack, listening on loopback.
type testNode struct {
	*Node
	net  *netstack.Net
	addr netip.Addr     // the node's overlay address, as the map knows it
	kind proto.NodeKind // in the map; a device unless a test says otherwise
}

func testLogger(t testing.TB) *slog.Logger {
	t.Helper()
	level := slog.LevelWarn
	if os.Getenv("NODE_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	w := &testWriter{w: t.Output()}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// testWriter writes to a test's output until the test ends; wireguard-go
// routines may still log while a device winds down.
type testWriter struct {
	mu   sync.Mutex
	w    io.Writer
	done bool
}

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return len(b), nil
	}
	return w.w.Write(b)
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// newTestNode starts a node whose map address is addr and whose netstack
// address is stackAddr (the same, unless a test spoofs).
func newTestNode(t testing.TB, addr, stackAddr netip.Addr) *testNode {
	t.Helper()
	return newTestNodeConfig(t, addr, stackAddr, Config{})
}

// newTestNodeConfig is newTestNode with the settings of cfg other than
// its key, TUN and logger, which it fills in.
func newTestNodeConfig(t testing.TB, addr, stackAddr netip.Addr, cfg Config) *testNode {
	t.Helper()
	priv := testkit.WireGuardKey(t)
	dev, tnet, err := netstack.CreateNetTUN([]netip.Addr{stackAddr}, nil, 1420)
	if err != nil {
		t.Fatal(err)
	}
	cfg.PrivateKey, cfg.TUN, cfg.Logger = priv, dev, testLogger(t)
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return &testNode{Node: n, net: tnet, addr: addr}
}

// peer returns tn as other nodes see it in the map.
func (tn *testNode) peer() proto.Peer {
	return proto.Peer{
		Key:       tn.PublicKey(),
		NodeID:    "node-" + tn.addr.String(),
		Kind:      cmp.Or(tn.kind, proto.KindDevice),
		Hostname:  "host-" + tn.addr.String(),
		Addresses: []netip.Prefix{netip.PrefixFrom(tn.addr, 32)},
		Endpoints: []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), tn.ListenPort())},
		Online:    true,
	}
}

func (tn *testNode) snapshot(t testing.TB, version uint64, peers ...*testNode) {
	t.Helper()
	self := tn.peer()
	msg := proto.MapMessage{Version: version, Snapshot: true, Self: &self, MeshDomain: "clustral.internal"}
	for _, p := range peers {
		msg.Peers = append(msg.Peers, p.peer())
	}
	if err := tn.Apply(msg); err != nil {
		t.Fatalf("apply snapshot: %v", err)
	}
}

// serveEcho echoes every connection accepted on tn's overlay address :port.
func (tn *testNode) serveEcho(t testing.TB, port uint16) {
	t.Helper()
	ln, err := tn.net.ListenTCPAddrPort(netip.AddrPortFrom(tn.addr, port))
	if err != nil {
		t.Fatal(err)
	}
	// A connection whose FIN was lost (its peer removed) would block
	// forever: Serve closes every accepted connection at the end.
	testkit.Serve(t, ln, func(c net.Conn) { io.Copy(c, c) })
}

// echo dials dst through tn's netstack within timeout and checks that a
// message comes back.
func (tn *testNode) echo(dst netip.AddrPort, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := tn.net.DialContextTCPAddrPort(ctx, dst)
	if err != nil {
		return fmt.Errorf("dial %v: %w", dst, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	msg := []byte("hello through the mesh")
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if string(got) != string(msg) {
		return fmt.Errorf("echo = %q, want %q", got, msg)
	}
	return nil
}

var (
	addrA = netip.MustParseAddr("100.64.0.1")
	addrB = netip.MustParseAddr("100.64.0.2")
	addrC = netip.MustParseAddr("100.64.0.3")
)

const (
	// okTimeout bounds what must work. It is generous for a loaded
	// machine; how fast a first handshake is, make bench measures.
	okTimeout   = 10 * time.Second
	failTimeout = 700 * time.Millisecond
)

func TestTunnelEcho(t *testing.T) {
	a := newTestNode(t, addrA, addrA)
	b := newTestNode(t, addrB, addrB)
	// An agent and a device, as in the mesh; the device sends at once,
	// while the agent starts its own handshake (TestFirstHandshake).
	a.kind = proto.KindAgent
	a.snapshot(t, 1, b)
	b.snapshot(t, 1, a)
	a.serveEcho(t, 80)
	b.serveEcho(t, 80)

	if err := b.echo(netip.AddrPortFrom(addrA, 80), okTimeout); err != nil {
		t.Fatalf("B → A: %v", err)
	}
	if err := a.echo(netip.AddrPortFrom(addrB, 80), okTimeout); err != nil {
		t.Fatalf("A → B: %v", err)
	}

	status, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(status.Peers) != 1 || status.Peers[0].Key != b.PublicKey() {
		t.Fatalf("A status peers = %+v, want only B", status.Peers)
	}
	if ps := status.Peers[0]; !ps.Healthy(time.Now()) || ps.RxBytes == 0 || ps.TxBytes == 0 {
		t.Errorf("A's view of B = %+v, want a recent handshake and traffic", ps)
	}
	if ps, ok := a.PeerStatus(b.PublicKey()); !ok || ps.LastHandshake.IsZero() {
		t.Errorf("PeerStatus(B) = %+v, %v; want a handshake", ps, ok)
	}
	d := status.Paths[PathDirect]
	if d.TxPackets == 0 || d.RxPackets == 0 || d.TxBytes < d.TxPackets*32 || d.RxBytes < d.RxPackets*32 {
		t.Errorf("direct path stats = %+v, want traffic both ways", d)
	}
	if status.ListenPort != a.ListenPort() || status.ListenPort == 0 || !status.Synced || status.Version != 1 {
		t.Errorf("status = port %d synced %v version %d", status.ListenPort, status.Synced, status.Version)
	}
	if got, ok := a.PeerByAddr(addrB); !ok || got.Key != b.PublicKey() {
		t.Errorf("PeerByAddr(B) = %v, %v", got.Key, ok)
	}
}

func TestDeltaAddRemove(t *testing.T) {
	a := newTestNode(t, addrA, addrA)
	b := newTestNode(t, addrB, addrB)
	a.snapshot(t, 1) // A does not know B yet
	b.snapshot(t, 1, a)
	a.serveEcho(t, 80)
	dst := netip.AddrPortFrom(addrA, 80)

	if err := b.echo(dst, failTimeout); err == nil {
		t.Fatal("B reached A before A had B as a peer")
	}

	if err := a.Apply(proto.MapMessage{Version: 2, Peers: []proto.Peer{b.peer()}}); err != nil {
		t.Fatalf("apply add delta: %v", err)
	}
	if err := b.echo(dst, okTimeout); err != nil {
		t.Fatalf("after add: %v", err)
	}

	if err := a.Apply(proto.MapMessage{Version: 3, Removed: []proto.Key{b.PublicKey()}}); err != nil {
		t.Fatalf("apply remove delta: %v", err)
	}
	if err := b.echo(dst, failTimeout); err == nil {
		t.Fatal("B still reaches A after A removed B")
	}
	if _, ok := a.PeerByAddr(addrB); ok {
		t.Error("PeerByAddr(B) still finds B after removal")
	}
	if _, ok := a.PeerStatus(b.PublicKey()); ok {
		t.Error("PeerStatus(B) still reports B after removal")
	}
}

// TestSpoofedSource checks invariant 2 of docs/design.md: a peer can only send from
// its own overlay addresses. C is known to A with C's own address; when C's
// netstack claims B's address instead, A drops C's packets.
func TestSpoofedSource(t *testing.T) {
	tests := []struct {
		name      string
		stackAddr netip.Addr
		wantReach bool
	}{
		{"own address", addrC, true},
		{"claims B's address", addrB, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestNode(t, addrA, addrA)
			b := newTestNode(t, addrB, addrB)
			c := newTestNode(t, addrC, tt.stackAddr)
			a.snapshot(t, 1, b, c)
			c.snapshot(t, 1, a)
			a.serveEcho(t, 80)

			// Wait until A and C share a session, so that a failure
			// below is the source filter's doing alone.
			a.waitHandshake(t, c.PublicKey())

			timeout := failTimeout
			if tt.wantReach {
				timeout = okTimeout
			}
			err := c.echo(netip.AddrPortFrom(addrA, 80), timeout)
			if reached := err == nil; reached != tt.wantReach {
				t.Fatalf("C reached A = %v (err %v), want %v", reached, err, tt.wantReach)
			}
		})
	}
}

// waitHandshake waits until tn has completed a handshake with key.
func (tn *testNode) waitHandshake(t testing.TB, key proto.Key) {
	t.Helper()
	testkit.WaitFor(t, "a handshake with "+key.ShortString(), func() bool {
		status, err := tn.Status()
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(status.Peers, func(ps PeerStatus) bool {
			return ps.Key == key && !ps.LastHandshake.IsZero()
		})
	})
}

// recorder wraps a node's UAPI setter and records every set.
type recorder struct {
	mu   sync.Mutex
	sets []string
}

func record(n *Node) *recorder {
	r := new(recorder)
	next := n.ipcSet
	n.ipcSet = func(s string) error {
		r.mu.Lock()
		r.sets = append(r.sets, s)
		r.mu.Unlock()
		return next(s)
	}
	return r
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sets
	r.sets = nil
	return s
}

// keysIn returns the peer keys a UAPI set names.
func keysIn(uapi string) []string {
	var keys []string
	for line := range strings.SplitSeq(uapi, "\n") {
		if k, ok := strings.CutPrefix(line, "public_key="); ok {
			keys = append(keys, k)
		}
	}
	return keys
}

func genKey(t testing.TB) proto.Key {
	t.Helper()
	k := testkit.WireGuardKey(t)
	return proto.Key(k.PublicKey())
}

// fakePeer is a peer at overlay address 100.64.x.y (i encoded in x.y) and
// fd00::i, without endpoints.
func fakePeer(t testing.TB, i int) proto.Peer {
	t.Helper()
	v4 := netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
	v6 := netip.AddrFrom16([16]byte{0: 0xfd, 14: byte(i >> 8), 15: byte(i)})
	return proto.Peer{
		Key:       genKey(t),
		NodeID:    fmt.Sprintf("n%d", i),
		Kind:      proto.KindDevice,
		Addresses: []netip.Prefix{netip.PrefixFrom(v4, 32), netip.PrefixFrom(v6, 128)},
	}
}

// applyFakePeers applies to n a snapshot (version 1) of count fake
// peers, fakePeer(tb, first) onwards, and returns them.
func applyFakePeers(tb testing.TB, n *Node, count, first int) []proto.Peer {
	tb.Helper()
	peers := make([]proto.Peer, count)
	for i := range peers {
		peers[i] = fakePeer(tb, first+i)
	}
	if err := n.Apply(proto.MapMessage{Version: 1, Snapshot: true, Peers: peers}); err != nil {
		tb.Fatal(err)
	}
	return peers
}

// newBareNode is a node on a netstack no test dials through.
func newBareNode(t testing.TB) *Node {
	t.Helper()
	return newTestNode(t, addrA, addrA).Node
}

func deviceAllowedIPs(t *testing.T, n *Node, key proto.Key) []string {
	t.Helper()
	dump, err := n.dev.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	in := false
	for line := range strings.SplitSeq(dump, "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "public_key":
			in = v == key.Hex()
		case "allowed_ip":
			if in {
				ips = append(ips, v)
			}
		}
	}
	return ips
}

func TestApplyTouchesOnlyChangedPeers(t *testing.T) {
	n := newBareNode(t)
	rec := record(n)
	peers := applyFakePeers(t, n, 50, 10)
	if sets := rec.take(); len(sets) != 1 || len(keysIn(sets[0])) != len(peers) {
		t.Fatalf("snapshot: %d sets, want 1 naming %d peers", len(sets), len(peers))
	}

	target := peers[7]
	moved := target
	moved.Addresses = []netip.Prefix{netip.MustParsePrefix("100.65.0.7/32")}
	moved.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("192.0.2.7:51820")}
	renamed := moved
	renamed.Hostname = "renamed"
	newPeer := fakePeer(t, 1000)
	pub := n.PublicKey()
	// Keepalives start at once only from the smaller key (see writePeer).
	keepalive := "persistent_keepalive_interval=25"
	if bytes.Compare(pub[:], target.Key[:]) > 0 {
		keepalive = "persistent_keepalive_interval=0"
	}

	tests := []struct {
		name      string
		msg       proto.MapMessage
		wantKeys  []proto.Key
		wantLines []string // lines the set must contain
	}{
		{
			name:     "upsert changed addresses and endpoint",
			msg:      proto.MapMessage{Version: 2, Peers: []proto.Peer{moved}},
			wantKeys: []proto.Key{target.Key},
			wantLines: []string{
				"replace_allowed_ips=true", "allowed_ip=100.65.0.7/32",
				"endpoint=" + target.Key.Hex() + "@192.0.2.7:51820", keepalive,
			},
		},
		{
			name: "identity-only change touches no WireGuard peer",
			msg:  proto.MapMessage{Version: 3, Peers: []proto.Peer{renamed}},
		},
		{
			name:      "add",
			msg:       proto.MapMessage{Version: 4, Peers: []proto.Peer{newPeer}},
			wantKeys:  []proto.Key{newPeer.Key},
			wantLines: []string{"replace_allowed_ips=true", "allowed_ip=" + newPeer.Addresses[0].String(), "allowed_ip=" + newPeer.Addresses[1].String()},
		},
		{
			name:      "remove",
			msg:       proto.MapMessage{Version: 5, Removed: []proto.Key{peers[3].Key}},
			wantKeys:  []proto.Key{peers[3].Key},
			wantLines: []string{"remove=true"},
		},
		{
			name: "remove unknown peer",
			msg:  proto.MapMessage{Version: 6, Removed: []proto.Key{genKey(t)}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := n.Apply(tt.msg); err != nil {
				t.Fatal(err)
			}
			sets := rec.take()
			if len(tt.wantKeys) == 0 {
				if len(sets) != 0 {
					t.Fatalf("sets = %q, want none", sets)
				}
				return
			}
			if len(sets) != 1 {
				t.Fatalf("got %d sets, want 1", len(sets))
			}
			var want []string
			for _, k := range tt.wantKeys {
				want = append(want, k.Hex())
			}
			if got := keysIn(sets[0]); !slices.Equal(got, want) {
				t.Errorf("set names peers %v, want %v", got, want)
			}
			lines := strings.Split(sets[0], "\n")
			for _, l := range tt.wantLines {
				if !slices.Contains(lines, l) {
					t.Errorf("set lacks line %q:\n%s", l, sets[0])
				}
			}
		})
	}

	if got := deviceAllowedIPs(t, n, target.Key); !slices.Equal(got, []string{"100.65.0.7/32"}) {
		t.Errorf("device allowed IPs of moved peer = %v", got)
	}
	if got, ok := n.PeerByAddr(netip.MustParseAddr("100.65.0.7")); !ok || got.Key != target.Key || got.Hostname != "renamed" {
		t.Errorf("PeerByAddr(new address) = %+v, %v", got, ok)
	}
	if _, ok := n.PeerByAddr(target.Addresses[0].Addr()); ok {
		t.Error("PeerByAddr(old address) still finds the moved peer")
	}
	if _, ok := n.Peer(peers[3].Key); ok {
		t.Error("removed peer still in the view")
	}
}

// TestAllowedIPsAreHostAddresses checks invariant 2 of docs/design.md at the device:
// whatever the prefix length on the wire, a peer is granted exactly its own
// addresses.
func TestAllowedIPsAreHostAddresses(t *testing.T) {
	n := newBareNode(t)
	p := proto.Peer{
		Key: genKey(t),
		Addresses: []netip.Prefix{
			netip.MustParsePrefix("100.64.7.9/10"),
			netip.MustParsePrefix("fd00:1::9/48"),
		},
	}
	if err := n.Apply(proto.MapMessage{Version: 1, Snapshot: true, Peers: []proto.Peer{p}}); err != nil {
		t.Fatal(err)
	}
	want := []string{"100.64.7.9/32", "fd00:1::9/128"}
	if got := deviceAllowedIPs(t, n, p.Key); !slices.Equal(got, want) {
		t.Errorf("device allowed IPs = %v, want %v", got, want)
	}
	if _, ok := n.PeerByAddr(netip.MustParseAddr("100.64.7.10")); ok {
		t.Error("PeerByAddr found the peer for a neighbouring address")
	}
}

func TestVersionGap(t *testing.T) {
	n := newBareNode(t)
	rec := record(n)
	p := fakePeer(t, 1)
	if err := n.Apply(proto.MapMessage{Version: 3, Peers: []proto.Peer{p}}); !errors.Is(err, ErrVersionGap) {
		t.Fatalf("delta before snapshot: err = %v, want ErrVersionGap", err)
	}
	if err := n.Apply(proto.MapMessage{Version: 5, Snapshot: true, Peers: []proto.Peer{p}}); err != nil {
		t.Fatal(err)
	}
	rec.take()

	q := fakePeer(t, 2)
	for _, v := range []uint64{5, 7, 4} {
		err := n.Apply(proto.MapMessage{Version: v, Peers: []proto.Peer{q}, Removed: []proto.Key{p.Key}})
		if !errors.Is(err, ErrVersionGap) {
			t.Errorf("delta version %d after 5: err = %v, want ErrVersionGap", v, err)
		}
	}
	if v, synced := n.Version(); v != 5 || !synced {
		t.Errorf("version = %d synced %v, want 5 true", v, synced)
	}
	if _, ok := n.Peer(p.Key); !ok {
		t.Error("gap removed a peer")
	}
	if _, ok := n.Peer(q.Key); ok {
		t.Error("gap added a peer")
	}
	if sets := rec.take(); len(sets) != 0 {
		t.Errorf("gap configured the device: %q", sets)
	}
	// Keepalives carry no version.
	if err := n.Apply(proto.MapMessage{KeepAlive: true, Version: 99}); err != nil {
		t.Errorf("keepalive: %v", err)
	}
	if err := n.Apply(proto.MapMessage{Version: 6, Peers: []proto.Peer{q}}); err != nil {
		t.Errorf("delta 6 after 5: %v", err)
	}
}

func TestInvalidMessageChangesNothing(t *testing.T) {
	n := newBareNode(t)
	rec := record(n)
	p := fakePeer(t, 1)
	if err := n.Apply(proto.MapMessage{Version: 1, Snapshot: true, Peers: []proto.Peer{p}}); err != nil {
		t.Fatal(err)
	}
	rec.take()

	q := fakePeer(t, 2)
	steal := fakePeer(t, 3)
	steal.Addresses = p.Addresses[:1]
	zero := fakePeer(t, 4)
	zero.Key = proto.Key{}
	own := fakePeer(t, 5)
	own.Key = n.PublicKey()
	badAddr := fakePeer(t, 6)
	badAddr.Addresses = []netip.Prefix{{}}
	badEP := fakePeer(t, 7)
	badEP.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:0")}
	twin := fakePeer(t, 8)
	twin.Addresses = q.Addresses[1:]
	otherSelf := fakePeer(t, 9)

	tests := []struct {
		name string
		msg  proto.MapMessage
	}{
		{"address of an existing peer", proto.MapMessage{Version: 2, Peers: []proto.Peer{q, steal}}},
		{"address claimed twice", proto.MapMessage{Version: 2, Peers: []proto.Peer{q, twin}}},
		{"address claimed twice in a snapshot", proto.MapMessage{Version: 9, Snapshot: true, Peers: []proto.Peer{q, twin}}},
		{"zero key", proto.MapMessage{Version: 2, Peers: []proto.Peer{q, zero}}},
		{"own key as peer", proto.MapMessage{Version: 2, Peers: []proto.Peer{own}}},
		{"invalid address", proto.MapMessage{Version: 2, Peers: []proto.Peer{badAddr}}},
		{"invalid endpoint", proto.MapMessage{Version: 2, Peers: []proto.Peer{badEP}}},
		{"peer listed twice", proto.MapMessage{Version: 2, Peers: []proto.Peer{q, q}}},
		{"upserted and removed", proto.MapMessage{Version: 2, Peers: []proto.Peer{q}, Removed: []proto.Key{q.Key}}},
		{"self of another node", proto.MapMessage{Version: 2, Self: &otherSelf, Peers: []proto.Peer{q}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := n.Apply(tt.msg)
			if !errors.Is(err, ErrInvalidMessage) {
				t.Fatalf("err = %v, want ErrInvalidMessage", err)
			}
			if sets := rec.take(); len(sets) != 0 {
				t.Errorf("device configured: %q", sets)
			}
			if v, synced := n.Version(); v != 1 || !synced {
				t.Errorf("version = %d synced %v, want 1 true", v, synced)
			}
			if got := n.Peers(); len(got) != 1 || got[0].Key != p.Key {
				t.Errorf("peers = %d, want only the original", len(got))
			}
			if got, ok := n.PeerByAddr(p.Addresses[0].Addr()); !ok || got.Key != p.Key {
				t.Errorf("PeerByAddr(original) = %v %v", got.Key, ok)
			}
		})
	}

	// An address may move between peers when the message releases it.
	moveTo := fakePeer(t, 10)
	moveTo.Addresses = p.Addresses
	if err := n.Apply(proto.MapMessage{Version: 2, Peers: []proto.Peer{moveTo}, Removed: []proto.Key{p.Key}}); err != nil {
		t.Fatalf("address released and claimed in one delta: %v", err)
	}
	if got, _ := n.PeerByAddr(p.Addresses[0].Addr()); got.Key != moveTo.Key {
		t.Errorf("address owner = %v, want the new peer", got.Key)
	}
}

func TestFailedSetResyncs(t *testing.T) {
	n := newBareNode(t)
	p, q := fakePeer(t, 1), fakePeer(t, 2)
	if err := n.Apply(proto.MapMessage{Version: 1, Snapshot: true, Peers: []proto.Peer{p}}); err != nil {
		t.Fatal(err)
	}
	next := n.ipcSet
	n.ipcSet = func(string) error { return errors.New("device busy") }
	if err := n.Apply(proto.MapMessage{Version: 2, Peers: []proto.Peer{q}}); err == nil {
		t.Fatal("apply with a failing device: want error")
	}
	n.ipcSet = next
	if err := n.Apply(proto.MapMessage{Version: 3, Peers: []proto.Peer{q}}); !errors.Is(err, ErrVersionGap) {
		t.Fatalf("delta after failed set: err = %v, want ErrVersionGap", err)
	}
	rec := record(n)
	if err := n.Apply(proto.MapMessage{Version: 3, Snapshot: true, Peers: []proto.Peer{p, q}}); err != nil {
		t.Fatal(err)
	}
	sets := rec.take()
	if len(sets) != 1 || !strings.HasPrefix(sets[0], "replace_peers=true\n") || len(keysIn(sets[0])) != 2 {
		t.Errorf("resync snapshot sets = %q, want a full reconfiguration", sets)
	}
	if got := deviceAllowedIPs(t, n, q.Key); len(got) != 2 {
		t.Errorf("device allowed IPs of q = %v", got)
	}
}

func TestOnChangeAndClusters(t *testing.T) {
	n := newBareNode(t)
	var changes []Change
	remove := n.OnChange(func(c Change) { changes = append(changes, c) })

	agent := func(i int, cluster string, online bool, host string) proto.Peer {
		p := fakePeer(t, i)
		p.Kind, p.Cluster, p.Online, p.Hostname = proto.KindAgent, cluster, online, host
		return p
	}
	prod1 := agent(1, "prod", false, "a")
	prod2 := agent(2, "prod", true, "b")
	prod3 := agent(3, "prod", true, "a")
	dev1 := agent(4, "dev", true, "x")
	self := proto.Peer{Key: n.PublicKey(), Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")}}

	if err := n.Apply(proto.MapMessage{
		Version: 1, Snapshot: true, Self: &self, MeshDomain: "clustral.internal", CABundle: "PEM",
		Peers: []proto.Peer{prod1, prod2, prod3, dev1},
	}); err != nil {
		t.Fatal(err)
	}
	if len(changes) != 1 {
		t.Fatalf("changes = %d, want 1", len(changes))
	}
	c := changes[0]
	if !c.Snapshot || len(c.Added) != 4 || !c.SelfChanged || !slices.Equal(c.ClustersAdded, []string{"dev", "prod"}) {
		t.Errorf("snapshot change = %+v", c)
	}
	if got := n.Clusters(); !slices.Equal(got, []string{"dev", "prod"}) {
		t.Errorf("Clusters = %v", got)
	}
	if s, ok := n.Self(); !ok || s.Key != n.PublicKey() || n.MeshDomain() != "clustral.internal" || n.CABundle() != "PEM" {
		t.Errorf("Self/MeshDomain/CABundle = %v %v %q %q", s.Key, ok, n.MeshDomain(), n.CABundle())
	}

	// Online first, then by hostname; none has a handshake.
	var order []proto.Key
	for _, p := range n.AgentsOf("prod") {
		order = append(order, p.Key)
	}
	if want := []proto.Key{prod3.Key, prod2.Key, prod1.Key}; !slices.Equal(order, want) {
		t.Errorf("AgentsOf(prod) order wrong: got %v, want %v", order, want)
	}
	if got := n.AgentsOf("nope"); len(got) != 0 {
		t.Errorf("AgentsOf(nope) = %v", got)
	}

	// Removing the only dev agent and taking a prod agent offline.
	prod2off := prod2
	prod2off.Online = false
	if err := n.Apply(proto.MapMessage{Version: 2, Peers: []proto.Peer{prod2off}, Removed: []proto.Key{dev1.Key}}); err != nil {
		t.Fatal(err)
	}
	c = changes[len(changes)-1]
	if len(c.Removed) != 1 || c.Removed[0].Key != dev1.Key || len(c.Updated) != 1 ||
		!c.Updated[0].Old.Online || c.Updated[0].New.Online || c.SelfChanged ||
		len(c.ClustersAdded) != 0 || !slices.Equal(c.ClustersRemoved, []string{"dev"}) {
		t.Errorf("delta change = %+v", c)
	}

	// A snapshot equal to the view changes nothing and notifies nobody.
	before := len(changes)
	if err := n.Apply(proto.MapMessage{
		Version: 10, Snapshot: true, Self: &self, MeshDomain: "clustral.internal", CABundle: "PEM",
		Peers: []proto.Peer{prod1, prod2off, prod3},
	}); err != nil {
		t.Fatal(err)
	}
	if len(changes) != before {
		t.Errorf("unchanged snapshot notified: %+v", changes[len(changes)-1])
	}

	remove()
	if err := n.Apply(proto.MapMessage{Version: 11, Removed: []proto.Key{prod1.Key}}); err != nil {
		t.Fatal(err)
	}
	if len(changes) != before {
		t.Error("removed subscriber still notified")
	}
}

func TestCertificateRenewal(t *testing.T) {
	n := newBareNode(t)
	var changes []Change
	defer n.OnChange(func(c Change) { changes = append(changes, c) })()
	self := proto.Peer{Key: n.PublicKey(), Kind: proto.KindAgent, Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")}}
	steps := []struct {
		name    string
		msg     proto.MapMessage
		want    string
		changed bool
	}{
		{"snapshot with a certificate", proto.MapMessage{Version: 1, Snapshot: true, Self: &self, Certificate: "C1"}, "C1", true},
		{"renewal alone", proto.MapMessage{Version: 2, Certificate: "C2"}, "C2", true},
		{"delta without one keeps it", proto.MapMessage{Version: 3, Peers: []proto.Peer{fakePeer(t, 7)}}, "C2", false},
		{"the same one again", proto.MapMessage{Version: 4, Certificate: "C2"}, "C2", false},
		{"snapshot without one keeps it", proto.MapMessage{Version: 9, Snapshot: true, Self: &self}, "C2", false},
	}
	for _, step := range steps {
		changes = nil
		if err := n.Apply(step.msg); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if got := n.Certificate(); got != step.want {
			t.Errorf("%s: Certificate = %q, want %q", step.name, got, step.want)
		}
		got := len(changes) > 0 && changes[0].CertificateChanged
		if got != step.changed {
			t.Errorf("%s: CertificateChanged = %v, want %v", step.name, got, step.changed)
		}
		if v, _ := n.Version(); v != step.msg.Version {
			t.Errorf("%s: version %d, want %d", step.name, v, step.msg.Version)
		}
	}
}

// TestEndStreamsReachSubscribers: a message naming live sessions to end
// is a change of its own, with the ids, and advances the version.
func TestEndStreamsReachSubscribers(t *testing.T) {
	n := newBareNode(t)
	var changes []Change
	defer n.OnChange(func(c Change) { changes = append(changes, c) })()
	self := proto.Peer{Key: n.PublicKey(), Kind: proto.KindAgent, Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")}}
	if err := n.Apply(proto.MapMessage{Version: 1, Snapshot: true, Self: &self}); err != nil {
		t.Fatal(err)
	}
	changes = nil
	if err := n.Apply(proto.MapMessage{Version: 2, EndStreams: []string{"c-1", "c-2"}}); err != nil {
		t.Fatal(err)
	}
	if len(changes) != 1 || !slices.Equal(changes[0].EndStreams, []string{"c-1", "c-2"}) {
		t.Errorf("changes = %+v, want one naming c-1 and c-2", changes)
	}
	if v, _ := n.Version(); v != 2 {
		t.Errorf("version %d, want 2", v)
	}
	changes = nil
	if err := n.Apply(proto.MapMessage{Version: 3, Peers: []proto.Peer{fakePeer(t, 7)}}); err != nil {
		t.Fatal(err)
	}
	if len(changes) != 1 || changes[0].EndStreams != nil {
		t.Errorf("a delta without ends = %+v", changes)
	}
}

func TestConcurrentLookups(t *testing.T) {
	n := newBareNode(t)
	peers := applyFakePeers(t, n, 20, 1)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				for _, p := range peers[:5] { // never changed below
					if got, ok := n.PeerByAddr(p.Addresses[0].Addr()); !ok || got.Key != p.Key {
						t.Errorf("PeerByAddr(%v) = %v %v", p.Addresses[0], got.Key, ok)
						return
					}
				}
				n.Peers()
				n.AgentsOf("x")
			}
		})
	}
	for v := uint64(2); v < 200; v++ {
		p := peers[5+int(v)%15]
		p.Hostname = fmt.Sprint(v)
		if err := n.Apply(proto.MapMessage{Version: v, Peers: []proto.Peer{p}}); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
}

func TestCloseStopsApply(t *testing.T) {
	n := newBareNode(t)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := n.Apply(proto.MapMessage{Version: 1, Snapshot: true}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply after Close: err = %v, want ErrClosed", err)
	}
}

func TestNewErrors(t *testing.T) {
	priv := testkit.WireGuardKey(t)
	tests := []struct {
		name string
		cfg  func() Config
	}{
		{"no TUN", func() Config { return Config{PrivateKey: priv} }},
		{"no key", func() Config { return Config{TUN: newTUN(t)} }},
		{"bad port", func() Config { return Config{PrivateKey: priv, TUN: newTUN(t), ListenPort: 70000} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n, err := New(tt.cfg()); err == nil {
				n.Close()
				t.Fatal("New succeeded")
			}
		})
	}
}

func newTUN(t *testing.T) *closeTrackingTUN {
	t.Helper()
	dev, _, err := netstack.CreateNetTUN([]netip.Addr{addrA}, nil, 1420)
	if err != nil {
		t.Fatal(err)
	}
	tt := &closeTrackingTUN{Device: dev}
	t.Cleanup(func() {
		if !tt.closed {
			t.Error("failed New left the TUN open")
		}
	})
	return tt
}

// closeTrackingTUN records whether it was closed.
type closeTrackingTUN struct {
	tun.Device
	closed bool
}

func (c *closeTrackingTUN) Close() error {
	c.closed = true
	return c.Device.Close()
}

func TestLazyKeepalive(t *testing.T) {
	n := newBareNode(t)
	n.lazyKeepalive = 10 * time.Millisecond
	sets := make(chan string, 16)
	next := n.ipcSet
	n.ipcSet = func(s string) error {
		sets <- s
		return next(s)
	}
	pub := n.PublicKey()
	var smaller, larger proto.Peer // keys relative to the node's
	for i := 1; smaller.Key.IsZero() || larger.Key.IsZero(); i++ {
		p := fakePeer(t, i)
		p.Endpoints = []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(50000+i))}
		if bytes.Compare(pub[:], p.Key[:]) > 0 {
			smaller = p
		} else {
			larger = p
		}
	}
	if err := n.Apply(proto.MapMessage{Version: 1, Snapshot: true, Peers: []proto.Peer{smaller, larger}}); err != nil {
		t.Fatal(err)
	}
	first := <-sets
	wantFirst := map[proto.Key]string{smaller.Key: "persistent_keepalive_interval=0", larger.Key: "persistent_keepalive_interval=25"}
	for k, line := range wantFirst {
		block := first[strings.Index(first, k.Hex()):]
		if i := strings.Index(block[1:], "public_key="); i >= 0 {
			block = block[:i+1]
		}
		if !strings.Contains(block, line+"\n") {
			t.Errorf("first set, block of %s lacks %q:\n%s", k.ShortString(), line, block)
		}
	}
	var second string
	select {
	case second = <-sets:
	case <-time.After(okTimeout):
		t.Fatal("keepalives of the lazy peer never enabled")
	}
	want := "public_key=" + smaller.Key.Hex() + "\nupdate_only=true\npersistent_keepalive_interval=25\n"
	if second != want {
		t.Errorf("second set = %q, want %q", second, want)
	}

	// A peer removed before its keepalives are due is left alone, and so
	// is the same key added again: its own delay counts from its arrival.
	first1 := arrival{smaller.Key, n.addedAt[smaller.Key]}
	// applyThenFireFirst applies msg, takes the set it makes, then fires
	// first1's keepalive timer, which must set nothing.
	applyThenFireFirst := func(msg proto.MapMessage, what string) {
		t.Helper()
		if err := n.Apply(msg); err != nil {
			t.Fatal(err)
		}
		<-sets
		n.enableKeepalive([]arrival{first1})
		select {
		case s := <-sets:
			t.Errorf("%s: %q", what, s)
		default:
		}
	}
	applyThenFireFirst(proto.MapMessage{Version: 2, Removed: []proto.Key{smaller.Key}}, "keepalive set for a removed peer")
	n.lazyKeepalive = time.Hour // the new arrival's own timer stays out of the way
	applyThenFireFirst(proto.MapMessage{Version: 3, Peers: []proto.Peer{smaller}}, "a keepalive planned for an earlier arrival of the peer was set")
}

func BenchmarkApplyDelta(b *testing.B) {
	for _, size := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("peers=%d", size), func(b *testing.B) {
			n := newBareNode(b)
			peers := applyFakePeers(b, n, size, 1)
			// Each delta moves one peer between two addresses and two
			// endpoints, so every Apply reconfigures it in the device.
			var alt [2]proto.Peer
			for i := range alt {
				alt[i] = peers[size/2]
				alt[i].Addresses = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 127, 0, byte(i)}), 32)}
				alt[i].Endpoints = []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(40000+i))}
			}
			version := uint64(1)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				version++
				if err := n.Apply(proto.MapMessage{Version: version, Peers: []proto.Peer{alt[i%2]}}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkPeerByAddr(b *testing.B) {
	n := newBareNode(b)
	peers := applyFakePeers(b, n, 10000, 1)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, ok := n.PeerByAddr(peers[i%len(peers)].Addresses[0].Addr()); !ok {
				b.Fatal("peer not found")
			}
			i++
		}
	})
}

func TestLazyToward(t *testing.T) {
	small, large := proto.Key{1}, proto.Key{2}
	tests := []struct {
		name     string
		self     proto.NodeKind
		pub      proto.Key
		peer     proto.Peer
		wantLazy bool
	}{
		{"agent to device, larger key", proto.KindAgent, large, proto.Peer{Key: small, Kind: proto.KindDevice}, false},
		{"agent to device, smaller key", proto.KindAgent, small, proto.Peer{Key: large, Kind: proto.KindDevice}, false},
		{"device to agent, smaller key", proto.KindDevice, small, proto.Peer{Key: large, Kind: proto.KindAgent}, true},
		{"same kind, smaller key goes first", proto.KindAgent, small, proto.Peer{Key: large, Kind: proto.KindAgent}, false},
		{"same kind, larger key waits", proto.KindAgent, large, proto.Peer{Key: small, Kind: proto.KindAgent}, true},
		{"kind unknown yet: by key", "", large, proto.Peer{Key: small, Kind: proto.KindDevice}, true},
	}
	for _, tt := range tests {
		n := &Node{kind: tt.self}
		n.pub = tt.pub
		if got := n.lazyToward(&tt.peer); got != tt.wantLazy {
			t.Errorf("%s: lazyToward = %v, want %v", tt.name, got, tt.wantLazy)
		}
	}
}
