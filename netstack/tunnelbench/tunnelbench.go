// Package tunnelbench joins two userspace network stacks with two
// wireguard-go devices over loopback UDP and measures bulk TCP throughput
// through the tunnel. It compares the tunnel as clustral ships it
// (clustral's netstack under a node.Node, whose node.Bind chooses paths and
// probes) with wireguard-go's stock tun/netstack on its default bind, and
// with plain loopback TCP.
//
// It lives apart from package netstack so that the stock netstack, which
// only serves as a baseline, never reaches a binary that imports netstack.
package tunnelbench

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	stocknetstack "golang.zx2c4.com/wireguard/tun/netstack"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/clustral/clustral/netstack"
	"github.com/clustral/clustral/node"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// Which names a stack to measure.
const (
	Ours     = "ours"     // clustral's netstack and node.Node, as they ship
	Stock    = "stock"    // golang.zx2c4.com/wireguard/tun/netstack as it ships
	Loopback = "loopback" // kernel loopback TCP, no tunnel
)

// MTU is the tunnel MTU of every setup.
const MTU = 1420

// Overlay addresses of the two ends of a setup.
var (
	AddrA = netip.MustParseAddr("100.64.0.1")
	AddrB = netip.MustParseAddr("100.64.0.2")
)

// Peer is one end of a Link.
type Peer struct {
	// TUN is the device wireguard-go reads and writes.
	TUN tun.Device
	// AllowedIPs are the source prefixes the other end accepts from
	// this peer, and routes to it.
	AllowedIPs []netip.Prefix
}

// Link is two wireguard-go devices that know each other as their only
// peer, each bound to a UDP port on 127.0.0.1.
type Link struct {
	A, B *device.Device
}

// Connect brings up a wireguard-go device on each peer's TUN with a fresh
// key and a loopback UDP bind, and configures each as the other's peer.
// Closing the Link closes both devices and with them both TUNs.
func Connect(a, b Peer) (*Link, error) {
	ka, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	kb, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	logger := device.NewLogger(device.LogLevelSilent, "")
	l := &Link{
		A: device.NewDevice(a.TUN, conn.NewDefaultBind(), logger),
		B: device.NewDevice(b.TUN, conn.NewDefaultBind(), logger),
	}
	portA, err := up(l.A, ka)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("device A: %w", err)
	}
	portB, err := up(l.B, kb)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("device B: %w", err)
	}
	if err := l.A.IpcSet(peerConfig(kb.PublicKey(), portB, b.AllowedIPs)); err != nil {
		l.Close()
		return nil, fmt.Errorf("device A: configure peer: %w", err)
	}
	if err := l.B.IpcSet(peerConfig(ka.PublicKey(), portA, a.AllowedIPs)); err != nil {
		l.Close()
		return nil, fmt.Errorf("device B: configure peer: %w", err)
	}
	return l, nil
}

// Close closes both devices.
func (l *Link) Close() {
	l.A.Close()
	l.B.Close()
}

func up(d *device.Device, k wgtypes.Key) (uint16, error) {
	if err := d.IpcSet("private_key=" + hex.EncodeToString(k[:]) + "\nlisten_port=0\n"); err != nil {
		return 0, fmt.Errorf("set key: %w", err)
	}
	if err := d.Up(); err != nil {
		return 0, fmt.Errorf("up: %w", err)
	}
	cfg, err := d.IpcGet()
	if err != nil {
		return 0, fmt.Errorf("get config: %w", err)
	}
	for line := range strings.SplitSeq(cfg, "\n") {
		if v, ok := strings.CutPrefix(line, "listen_port="); ok {
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return 0, fmt.Errorf("listen port %q: %w", v, err)
			}
			return uint16(p), nil
		}
	}
	return 0, errors.New("no listen port")
}

func peerConfig(pub wgtypes.Key, port uint16, allowed []netip.Prefix) string {
	var b strings.Builder
	fmt.Fprintf(&b, "public_key=%s\nendpoint=127.0.0.1:%d\n", hex.EncodeToString(pub[:]), port)
	for _, p := range allowed {
		fmt.Fprintf(&b, "allowed_ip=%s\n", p)
	}
	return b.String()
}

// Setup is a listener and a way to dial it, through a tunnel or not.
type Setup struct {
	// Listener accepts on the B end.
	Listener net.Listener
	// Dial connects from the A end to Listener.
	Dial func(ctx context.Context) (net.Conn, error)

	close func()
}

// Close releases everything the Setup holds.
func (s *Setup) Close() { s.close() }

// NewSetup builds the setup named by which: Ours, Stock or Loopback.
func NewSetup(which string) (*Setup, error) {
	switch which {
	case Ours:
		return newOurs()
	case Stock:
		return newStock()
	case Loopback:
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		var d net.Dialer
		return &Setup{
			Listener: ln,
			Dial: func(ctx context.Context) (net.Conn, error) {
				return d.DialContext(ctx, "tcp", ln.Addr().String())
			},
			close: func() { ln.Close() },
		}, nil
	}
	return nil, fmt.Errorf("unknown setup %q", which)
}

// stack is one end of a tunnelled Setup, whichever netstack runs it.
type stack struct {
	tun tun.Device
	// close releases the stack while no Link owns its TUN yet.
	close  func()
	listen func(netip.AddrPort) (net.Listener, error)
	dial   func(context.Context, netip.AddrPort) (net.Conn, error)
}

// newOurs joins two clustral netstacks with two node.Nodes configured as
// `clustral up` and the agent configure theirs (node/mesh): keyed
// endpoints on node.Bind, probing, relay-ready, each knowing the other
// from a map snapshot. A regression anywhere on that path shows here.
func newOurs() (*Setup, error) {
	var (
		stacks [2]*netstack.Stack
		nodes  [2]*node.Node
	)
	closeAll := func() {
		for i := range nodes {
			if nodes[i] != nil {
				nodes[i].Close() // closes its stack's TUN
			} else if stacks[i] != nil {
				stacks[i].Close()
			}
		}
	}
	logger := slog.New(slog.DiscardHandler)
	for i, addr := range []netip.Addr{AddrA, AddrB} {
		s, err := netstack.New(netstack.Config{Addrs: []netip.Addr{addr}, MTU: MTU, Logger: logger})
		if err != nil {
			closeAll()
			return nil, err
		}
		stacks[i] = s
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("generate key: %w", err)
		}
		n, err := node.New(node.Config{PrivateKey: k, TUN: s.TUN(), Logger: logger, Relay: true})
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("node %s: %w", addr, err)
		}
		nodes[i] = n
	}
	peers := [2]proto.Peer{}
	for i, addr := range []netip.Addr{AddrA, AddrB} {
		peers[i] = proto.Peer{
			Key:       nodes[i].PublicKey(),
			NodeID:    "node-" + addr.String(),
			Kind:      proto.KindDevice,
			Hostname:  "host-" + addr.String(),
			Addresses: []netip.Prefix{netip.PrefixFrom(addr, 32)},
			Endpoints: []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), nodes[i].ListenPort())},
			Online:    true,
		}
	}
	for i := range nodes {
		self := peers[i]
		msg := proto.MapMessage{Version: 1, Snapshot: true, Self: &self, Peers: []proto.Peer{peers[1-i]}}
		if err := nodes[i].Apply(msg); err != nil {
			closeAll()
			return nil, fmt.Errorf("node %s: apply map: %w", self.Addresses[0].Addr(), err)
		}
	}
	addr := netip.AddrPortFrom(AddrB, 5001)
	ln, err := stacks[1].ListenTCP(addr)
	if err != nil {
		closeAll()
		return nil, err
	}
	return &Setup{
		Listener: ln,
		Dial:     func(ctx context.Context) (net.Conn, error) { return stacks[0].DialTCPAddrPort(ctx, addr) },
		close:    func() { ln.Close(); closeAll() },
	}, nil
}

func newStock() (*Setup, error) {
	return newTunnelled(func(addr netip.Addr) (*stack, error) {
		t, n, err := stocknetstack.CreateNetTUN([]netip.Addr{addr}, nil, MTU)
		if err != nil {
			return nil, err
		}
		return &stack{
			tun:    t,
			close:  func() { t.Close() },
			listen: func(ap netip.AddrPort) (net.Listener, error) { return n.ListenTCPAddrPort(ap) },
			dial: func(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
				return n.DialContextTCPAddrPort(ctx, ap)
			},
		}, nil
	})
}

// newTunnelled opens a stack at AddrA and one at AddrB, joins them with
// Connect and listens on B's port 5001. On failure it releases what it
// opened.
func newTunnelled(open func(netip.Addr) (*stack, error)) (*Setup, error) {
	a, err := open(AddrA)
	if err != nil {
		return nil, err
	}
	b, err := open(AddrB)
	if err != nil {
		a.close()
		return nil, err
	}
	link, err := Connect(
		Peer{TUN: a.tun, AllowedIPs: []netip.Prefix{netip.PrefixFrom(AddrA, 32)}},
		Peer{TUN: b.tun, AllowedIPs: []netip.Prefix{netip.PrefixFrom(AddrB, 32)}},
	)
	if err != nil {
		a.close()
		b.close()
		return nil, err
	}
	addr := netip.AddrPortFrom(AddrB, 5001)
	ln, err := b.listen(addr)
	if err != nil {
		link.Close()
		return nil, err
	}
	return &Setup{
		Listener: ln,
		Dial:     func(ctx context.Context) (net.Conn, error) { return a.dial(ctx, addr) },
		close:    func() { ln.Close(); link.Close() },
	}, nil
}

// Result is the outcome of one bulk transfer.
type Result struct {
	Bytes    int64
	Duration time.Duration
	// CPU is the user plus system time the whole process used during
	// the transfer: both stacks, both wireguard-go devices, both ends.
	CPU time.Duration
}

// BytesPerSec is the transfer's goodput.
func (r Result) BytesPerSec() float64 {
	return float64(r.Bytes) / r.Duration.Seconds()
}

// MBPerSec is the goodput in 10^6 bytes per second.
func (r Result) MBPerSec() float64 { return r.BytesPerSec() / 1e6 }

// CPUSecondsPerGiB is the CPU time spent per GiB moved.
func (r Result) CPUSecondsPerGiB() float64 {
	return r.CPU.Seconds() / (float64(r.Bytes) / (1 << 30))
}

// MeasureTunnel builds the setup named by which (Ours, Stock or Loopback),
// moves n bytes over one TCP connection from the A end to the B end, and
// reports the time and the process CPU it took. The setup is torn down
// before it returns.
func MeasureTunnel(ctx context.Context, which string, n int64) (Result, error) {
	s, err := NewSetup(which)
	if err != nil {
		return Result{}, fmt.Errorf("setup %s: %w", which, err)
	}
	defer s.Close()
	// Warm up: handshake and the first round trips are not throughput.
	if _, err := Transfer(ctx, s, 1<<20); err != nil {
		return Result{}, fmt.Errorf("warm up %s: %w", which, err)
	}
	cpu0 := testkit.CPUTime()
	start := time.Now()
	got, err := Transfer(ctx, s, n)
	d := time.Since(start)
	cpu := testkit.CPUTime() - cpu0
	if err != nil {
		return Result{}, fmt.Errorf("transfer %s: %w", which, err)
	}
	return Result{Bytes: got, Duration: d, CPU: cpu}, nil
}

// Transfer dials s, writes n bytes, half-closes, and waits until the
// accepting side has read them all. It returns the bytes received.
func Transfer(ctx context.Context, s *Setup, n int64) (int64, error) {
	type accepted struct {
		n   int64
		err error
	}
	acc := make(chan accepted, 1)
	go func() {
		c, err := s.Listener.Accept()
		if err != nil {
			acc <- accepted{err: err}
			return
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		got, err := io.Copy(io.Discard, c)
		acc <- accepted{got, err}
	}()

	c, err := s.Dial(ctx)
	if err != nil {
		return 0, fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	buf := make([]byte, 256<<10)
	for left := n; left > 0; {
		chunk := buf[:min(int64(len(buf)), left)]
		w, err := c.Write(chunk)
		left -= int64(w)
		if err != nil {
			return 0, fmt.Errorf("write: %w", err)
		}
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			return 0, fmt.Errorf("close write: %w", err)
		}
	} else {
		return 0, fmt.Errorf("%T cannot half-close", c)
	}
	select {
	case a := <-acc:
		if a.err != nil {
			return a.n, fmt.Errorf("read: %w", a.err)
		}
		if a.n != n {
			return a.n, fmt.Errorf("received %d bytes, sent %d", a.n, n)
		}
		return a.n, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}
