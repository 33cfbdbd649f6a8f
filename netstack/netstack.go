// Package netstack is the userspace TCP/IP stack behind a clustral node: a
// gVisor network stack that a wireguard-go device reads and writes as its
// TUN device, with listeners and dialers on the node's overlay addresses.
//
// A Stack owns one gVisor stack and one link endpoint. Packets the stack
// sends are handed to wireguard-go through TUN().Read in batches; large TCP
// segments leave gVisor unsegmented (host GSO) and are cut to the MTU while
// they are copied into wireguard-go's buffers. Packets wireguard-go decrypts
// arrive through TUN().Write and are coalesced (GRO) before they reach TCP.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// DefaultMTU is the MTU used when Config.MTU is zero: the usual WireGuard
// MTU, which leaves room for the outer IPv6 and WireGuard headers inside a
// 1500-byte path.
const DefaultMTU = 1420

// nicID is the only NIC of a Stack.
const nicID tcpip.NICID = 1

// TCP tuning. gVisor's defaults (1 MiB buffers, 4 MiB cap, Reno) leave a
// tunnel with any latency window-limited. gVisor never grows a send
// buffer, so its default bounds the bytes in flight per connection: 4 MiB
// sustains 40 MB/s at 100 ms RTT. Buffers are filled on demand, so idle
// connections cost nothing. The receive buffer grows (moderation) up to
// its max as the peer's bandwidth-delay product requires.
const (
	tcpSendBufDefault = 4 << 20
	tcpSendBufMax     = 8 << 20
	tcpRecvBufDefault = 1 << 20
	tcpRecvBufMax     = 8 << 20
	tcpCongestion     = "cubic"
)

// Config configures a Stack.
type Config struct {
	// Addrs are the node's overlay addresses, IPv4 and/or IPv6. At least
	// one is required. Each address is its own host route (/32 or /128):
	// the stack sends every other destination to wireguard-go, which
	// picks the peer by allowed IPs.
	Addrs []netip.Addr

	// MTU of the TUN device; DefaultMTU if zero. It must match the MTU
	// the wireguard-go device is expected to carry.
	MTU int

	// Logger receives the stack's diagnostics; slog.Default() if nil.
	Logger *slog.Logger
}

// Stack is a gVisor network stack bound to a node's overlay addresses.
//
// All methods are safe for concurrent use. Close tears the stack down:
// listeners stop accepting, connections fail, and a blocked TUN().Read
// returns os.ErrClosed.
type Stack struct {
	logger *slog.Logger
	stack  *stack.Stack
	ep     *endpoint
	dev    *device
	addrs  []netip.Addr
	hasV4  bool
	hasV6  bool

	mu        sync.Mutex
	closed    bool
	listeners map[*listener]struct{}
}

// New creates a Stack with the addresses in cfg.
func New(cfg Config) (*Stack, error) {
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("netstack: no overlay address")
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = DefaultMTU
	}
	if mtu < 1280 || mtu > 65535 {
		return nil, fmt.Errorf("netstack: MTU %d out of range [1280, 65535]", mtu)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}

	s := &Stack{
		logger: logger.With("component", "netstack"),
		stack: stack.New(stack.Options{
			NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
			TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
			HandleLocal:        true,
		}),
		ep:        newEndpoint(uint32(mtu)),
		listeners: make(map[*listener]struct{}),
	}
	s.dev = &device{s: s, ep: s.ep, mtu: mtu, events: make(chan tun.Event, 1)}
	s.dev.events <- tun.EventUp

	if err := s.tune(); err != nil {
		s.stack.Close()
		return nil, err
	}
	if err := s.stack.CreateNIC(nicID, s.ep); err != nil {
		s.stack.Close()
		return nil, fmt.Errorf("netstack: create NIC: %s", err)
	}
	for _, a := range cfg.Addrs {
		if err := s.addAddr(a); err != nil {
			s.stack.Close()
			return nil, err
		}
	}
	if s.hasV4 {
		s.stack.AddRoute(tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: nicID})
	}
	if s.hasV6 {
		s.stack.AddRoute(tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	}
	return s, nil
}

func (s *Stack) tune() error {
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	cc := tcpip.CongestionControlOption(tcpCongestion)
	opts := []tcpip.SettableTransportProtocolOption{
		&sack,
		&moderate,
		&cc,
		&tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcpSendBufDefault, Max: tcpSendBufMax},
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcpRecvBufDefault, Max: tcpRecvBufMax},
	}
	for _, o := range opts {
		if err := s.stack.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			return fmt.Errorf("netstack: set TCP option %T: %s", o, err)
		}
	}
	return nil
}

func (s *Stack) addAddr(a netip.Addr) error {
	a = a.Unmap()
	var proto tcpip.NetworkProtocolNumber
	switch {
	case a.Is4():
		proto = ipv4.ProtocolNumber
		s.hasV4 = true
	case a.Is6():
		proto = ipv6.ProtocolNumber
		s.hasV6 = true
	default:
		return fmt.Errorf("netstack: invalid address %v", a)
	}
	pa := tcpip.ProtocolAddress{
		Protocol:          proto,
		AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix(),
	}
	if err := s.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		return fmt.Errorf("netstack: add address %v: %s", a, err)
	}
	s.addrs = append(s.addrs, a)
	return nil
}

// Addrs returns the stack's overlay addresses.
func (s *Stack) Addrs() []netip.Addr {
	return append([]netip.Addr(nil), s.addrs...)
}

// TUN returns the wireguard-go side of the stack, to pass to
// device.NewDevice. The same Device is returned on every call. Closing it
// (as wireguard-go's Device.Close does) closes the Stack.
func (s *Stack) TUN() tun.Device { return s.dev }

// Close tears the stack down: it closes every listener, aborts every
// connection, and unblocks TUN().Read. Close is idempotent.
func (s *Stack) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	ls := s.listeners
	s.listeners = nil
	s.mu.Unlock()

	for l := range ls {
		l.Close()
	}
	s.ep.close()
	s.stack.Close()
	s.stack.Wait()
	s.dev.closeEvents()
	return nil
}

// Stats reports packet counters of the link between the stack and
// wireguard-go.
type Stats struct {
	// OutPackets and OutBytes count IP packets handed to wireguard-go,
	// after segmentation.
	OutPackets, OutBytes uint64
	// InPackets and InBytes count IP packets received from wireguard-go.
	InPackets, InBytes uint64
	// OutDropped counts packets dropped because wireguard-go did not keep
	// up and the outbound queue was full.
	OutDropped uint64
	// InDropped counts inbound packets that were not IPv4 or IPv6.
	InDropped uint64
}

// Stats returns the link counters.
func (s *Stack) Stats() Stats { return s.ep.stats() }

// AbortTCP resets every TCP connection of the stack whose remote address
// is one of remote, at once: no FIN, data or retransmission is sent toward
// it afterwards. A node calls it for a peer that left its map, so that when
// the peer comes back the first packet toward it is new traffic, not a
// retransmission that starts a WireGuard handshake crossing the peer's own.
// Their net.Conns then fail. It returns how many connections it reset.
func (s *Stack) AbortTCP(remote ...netip.Addr) int {
	if len(remote) == 0 {
		return 0
	}
	set := make(map[tcpip.Address]bool, len(remote))
	for _, a := range remote {
		set[tcpip.AddrFromSlice(a.Unmap().AsSlice())] = true
	}
	n := 0
	for _, ep := range s.stack.RegisteredEndpoints() {
		te, ok := ep.(*tcp.Endpoint)
		if !ok {
			continue
		}
		info, ok := te.Info().(*stack.TransportEndpointInfo)
		if !ok || !set[info.ID.RemoteAddress] {
			continue
		}
		te.Abort()
		n++
	}
	return n
}

// DialContext connects to addr, a literal "ip:port", on the named network
// ("tcp", "tcp4", "tcp6", "udp", "udp4", "udp6"). Names are not resolved:
// mesh names are the caller's business. A connection refused by the peer
// wraps syscall.ECONNREFUSED; an unreachable host wraps
// syscall.EHOSTUNREACH; a handshake timeout wraps syscall.ETIMEDOUT.
func (s *Stack) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: fmt.Errorf("address %q is not an IP literal", host)}
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: fmt.Errorf("bad port %q", portStr)}
	}
	ap := netip.AddrPortFrom(ip.Unmap(), uint16(port))
	if err := checkFamily(network, ap.Addr()); err != nil {
		return nil, err
	}
	switch network {
	case "tcp", "tcp4", "tcp6":
		return s.DialTCPAddrPort(ctx, ap)
	case "udp", "udp4", "udp6":
		return s.DialUDPAddrPort(netip.AddrPort{}, ap)
	}
	return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
}

func checkFamily(network string, a netip.Addr) error {
	switch {
	case len(network) == 4 && network[3] == '4' && !a.Is4(),
		len(network) == 4 && network[3] == '6' && !a.Is6():
		return &net.OpError{Op: "dial", Net: network, Err: &net.AddrError{Err: "address family mismatch", Addr: a.String()}}
	}
	return nil
}

// DialTCPAddrPort opens a TCP connection to addr. ctx bounds the handshake
// only. The returned conn is a *gonet.TCPConn, which supports CloseWrite.
func (s *Stack) DialTCPAddrPort(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	fa, proto := fullAddr(addr)
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: err}
	}
	if err := ctx.Err(); err != nil {
		return nil, opErr(err)
	}
	var wq waiter.Queue
	ep, terr := s.stack.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return nil, opErr(tcpipError(terr))
	}
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)

	terr = ep.Connect(fa)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, opErr(ctx.Err())
		case <-notify:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, opErr(tcpipError(terr))
	}
	return gonet.NewTCPConn(&wq, ep), nil
}

// DialUDPAddrPort opens a UDP socket. A zero laddr picks the stack's
// address and an ephemeral port; a zero raddr leaves the socket
// unconnected (use WriteTo).
func (s *Stack) DialUDPAddrPort(laddr, raddr netip.AddrPort) (*gonet.UDPConn, error) {
	var lfa, rfa *tcpip.FullAddress
	proto := ipv4.ProtocolNumber
	if laddr.IsValid() {
		fa, p := fullAddr(laddr)
		lfa, proto = &fa, p
	}
	if raddr.IsValid() {
		fa, p := fullAddr(raddr)
		rfa, proto = &fa, p
	}
	c, err := gonet.DialUDP(s.stack, lfa, rfa, proto)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "udp", Addr: net.UDPAddrFromAddrPort(raddr), Err: err}
	}
	return c, nil
}

// ListenUDP opens a UDP socket bound to laddr.
func (s *Stack) ListenUDP(laddr netip.AddrPort) (*gonet.UDPConn, error) {
	return s.DialUDPAddrPort(laddr, netip.AddrPort{})
}

// ListenTCP listens on addr; an unspecified address (0.0.0.0 or ::)
// listens on every overlay address of that family. Accepted connections
// are *gonet.TCPConn; their RemoteAddr is the peer's overlay address and
// port as seen on the wire, which wireguard-go has already checked against
// the peer's allowed IPs. The listener is closed by its Close or by the
// Stack's.
func (s *Stack) ListenTCP(addr netip.AddrPort) (net.Listener, error) {
	fa, proto := fullAddr(addr)
	if !addr.Addr().IsValid() || addr.Addr().IsUnspecified() {
		fa.Addr = tcpip.Address{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: net.ErrClosed}
	}
	gl, err := gonet.ListenTCP(s.stack, fa, proto)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: err}
	}
	l := &listener{TCPListener: gl, s: s}
	s.listeners[l] = struct{}{}
	return l, nil
}

// listener untracks itself from its Stack on Close.
type listener struct {
	*gonet.TCPListener
	s    *Stack
	once sync.Once
}

func (l *listener) Close() error {
	var err error
	l.once.Do(func() {
		err = l.TCPListener.Close()
		l.s.mu.Lock()
		delete(l.s.listeners, l)
		l.s.mu.Unlock()
	})
	return err
}

func fullAddr(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	a := ap.Addr().Unmap()
	proto := ipv4.ProtocolNumber
	if a.Is6() {
		proto = ipv6.ProtocolNumber
	}
	fa := tcpip.FullAddress{NIC: nicID, Port: ap.Port()}
	if a.IsValid() {
		fa.Addr = tcpip.AddrFromSlice(a.AsSlice())
	}
	return fa, proto
}

// tcpipError converts a gVisor error to an error that callers can test
// with errors.Is against the usual syscall errnos.
func tcpipError(err tcpip.Error) error {
	var errno syscall.Errno
	switch err.(type) {
	case *tcpip.ErrConnectionRefused:
		errno = syscall.ECONNREFUSED
	case *tcpip.ErrHostUnreachable, *tcpip.ErrHostDown:
		errno = syscall.EHOSTUNREACH
	case *tcpip.ErrNetworkUnreachable, *tcpip.ErrNoNet:
		errno = syscall.ENETUNREACH
	case *tcpip.ErrTimeout:
		errno = syscall.ETIMEDOUT
	case *tcpip.ErrConnectionReset:
		errno = syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted, *tcpip.ErrAborted:
		errno = syscall.ECONNABORTED
	case *tcpip.ErrClosedForSend, *tcpip.ErrClosedForReceive, *tcpip.ErrInvalidEndpointState:
		return net.ErrClosed
	default:
		return errors.New(err.String())
	}
	return errno
}
