package node

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/clustral/clustral/proto"
)

// Path is the way a WireGuard packet travels between this node and a peer.
type Path uint8

const (
	// PathDirect is UDP straight to the peer's endpoint.
	PathDirect Path = iota
	// PathRelay is the coordinator's relay: packets travel inside an
	// HTTPS/WebSocket connection to the coordinator, addressed by the
	// peer's public key. Reserved; no packet takes it yet.
	PathRelay

	numPaths
)

func (p Path) String() string {
	switch p {
	case PathDirect:
		return "direct"
	case PathRelay:
		return "relay"
	}
	return fmt.Sprintf("Path(%d)", uint8(p))
}

// ErrNoPath is returned by Send for an endpoint that has no usable path.
var ErrNoPath = errors.New("no path to peer")

// PathStats counts the traffic of one path. Bytes are WireGuard datagram
// bytes (ciphertext), without UDP/IP headers.
type PathStats struct {
	TxPackets uint64
	TxBytes   uint64
	RxPackets uint64
	RxBytes   uint64
}

type pathCounters struct {
	txPackets, txBytes, rxPackets, rxBytes atomic.Uint64
}

func (c *pathCounters) load() PathStats {
	return PathStats{
		TxPackets: c.txPackets.Load(),
		TxBytes:   c.txBytes.Load(),
		RxPackets: c.rxPackets.Load(),
		RxBytes:   c.rxBytes.Load(),
	}
}

// Bind is the node's packet transport: a conn.Bind that wireguard-go sends
// and receives WireGuard datagrams through.
//
// Today every packet takes the direct path, over the UDP sockets of a
// wrapped conn.StdNetBind. The Bind is the single place where paths are
// chosen, so a relay path and direct-path probing are added here without
// touching wireguard-go:
//
//   - Endpoints. wireguard-go learns a peer's endpoint from the UAPI line
//     "endpoint=", which it hands to ParseEndpoint. The Bind accepts, besides
//     the plain "ip:port", the keyed form "<public key hex>@ip:port[,ip:port...]"
//     that Node writes. The resulting *Endpoint knows the peer's key and its
//     candidate addresses; the first candidate is the current direct path.
//     A relay-only form ("<key hex>@") and path switching belong here.
//   - Receive. Packets from an address that is some keyed endpoint's current
//     direct address are reported with that same *Endpoint, so when
//     wireguard-go roams the peer to the packet's source the peer keeps its
//     key and path state. Packets from other addresses get a keyless
//     *Endpoint. A relay path adds one ReceiveFunc that reads relay frames
//     and reports them with the sender's keyed *Endpoint.
//   - Send routes by the endpoint's current path.
//
// The counters (Stats) are per path.
//
// A Bind is safe for concurrent use. It is owned by the wireguard-go device
// it is given to, which opens and closes it.
type Bind struct {
	udp conn.Bind // *conn.StdNetBind

	mu    sync.Mutex // guards byKey and port
	byKey map[proto.Key]*Endpoint
	port  uint16
	// byAddr maps a normalized direct address to the keyed endpoint whose
	// current direct path it is. Read on every received batch, written
	// only on configuration changes.
	byAddr sync.Map // netip.AddrPort → *Endpoint

	stats [numPaths]pathCounters
}

var _ conn.Bind = (*Bind)(nil)

// NewBind returns a Bind carrying UDP on the default sockets of the platform.
func NewBind() *Bind {
	return &Bind{
		udp:   conn.NewStdNetBind(),
		byKey: make(map[proto.Key]*Endpoint),
	}
}

// Open implements conn.Bind. It opens the UDP sockets on port (0 picks a
// random one) and returns their receive functions.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.udp.Open(port)
	if err != nil {
		return nil, 0, err
	}
	b.mu.Lock()
	b.port = actual
	b.mu.Unlock()
	wrapped := make([]conn.ReceiveFunc, len(fns))
	for i, fn := range fns {
		wrapped[i] = b.receiveDirect(fn)
	}
	return wrapped, actual, nil
}

// Port reports the UDP port the Bind was last opened on, or 0.
func (b *Bind) Port() uint16 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.port
}

// Close implements conn.Bind.
func (b *Bind) Close() error {
	return b.udp.Close()
}

// SetMark implements conn.Bind.
func (b *Bind) SetMark(mark uint32) error { return b.udp.SetMark(mark) }

// BatchSize implements conn.Bind.
func (b *Bind) BatchSize() int { return b.udp.BatchSize() }

// Stats returns the traffic counters of a path.
func (b *Bind) Stats(p Path) PathStats {
	if p >= numPaths {
		return PathStats{}
	}
	return b.stats[p].load()
}

func (b *Bind) receiveDirect(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, err := fn(bufs, sizes, eps)
		if err != nil {
			return n, err
		}
		var (
			bytes, packets uint64
			lastAP         netip.AddrPort
			lastEP         *Endpoint
		)
		for i := range n {
			if sizes[i] == 0 {
				continue
			}
			packets++
			bytes += uint64(sizes[i])
			inner, ok := eps[i].(*conn.StdNetEndpoint)
			if !ok {
				continue
			}
			ap := normalize(inner.AddrPort)
			if lastEP == nil || ap != lastAP {
				lastAP = ap
				if v, ok := b.byAddr.Load(ap); ok {
					lastEP = v.(*Endpoint)
				} else {
					lastEP = nil
				}
			}
			if lastEP != nil {
				eps[i] = lastEP
			} else {
				eps[i] = &Endpoint{direct: inner, addr: ap}
			}
		}
		c := &b.stats[PathDirect]
		c.rxPackets.Add(packets)
		c.rxBytes.Add(bytes)
		return n, nil
	}
}

// Send implements conn.Bind. It sends bufs along ep's current path.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*Endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	if e.direct == nil {
		return fmt.Errorf("send to %v: %w", e, ErrNoPath)
	}
	if err := b.udp.Send(bufs, e.direct); err != nil {
		return err
	}
	var n uint64
	for _, buf := range bufs {
		n += uint64(len(buf))
	}
	c := &b.stats[PathDirect]
	c.txPackets.Add(uint64(len(bufs)))
	c.txBytes.Add(n)
	return nil
}

// ParseEndpoint implements conn.Bind. It accepts "ip:port", and the keyed
// form "<64 hex digits of the peer's public key>@ip:port[,ip:port...]"
// (see FormatEndpoint). Parsing a keyed endpoint registers it: packets
// received from its current direct address are then attributed to it,
// until it is replaced by a newer keyed endpoint of the same key or
// forgotten (Forget).
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	keyHex, addrs, keyed := strings.Cut(s, "@")
	if !keyed {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return nil, fmt.Errorf("parse endpoint %q: %w", s, err)
		}
		ap = normalize(ap)
		return &Endpoint{direct: &conn.StdNetEndpoint{AddrPort: ap}, addr: ap}, nil
	}
	var key proto.Key
	if len(keyHex) != 2*len(key) {
		return nil, fmt.Errorf("parse endpoint %q: key must be %d hex digits", s, 2*len(key))
	}
	if _, err := hex.Decode(key[:], []byte(keyHex)); err != nil {
		return nil, fmt.Errorf("parse endpoint %q: %w", s, err)
	}
	e := &Endpoint{key: key}
	for a := range strings.SplitSeq(addrs, ",") {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			return nil, fmt.Errorf("parse endpoint %q: %w", s, err)
		}
		e.candidates = append(e.candidates, normalize(ap))
	}
	if len(e.candidates) == 0 {
		return nil, fmt.Errorf("parse endpoint %q: no address", s)
	}
	e.addr = e.candidates[0]
	e.direct = &conn.StdNetEndpoint{AddrPort: e.addr}

	b.mu.Lock()
	defer b.mu.Unlock()
	b.forgetLocked(key)
	b.byKey[key] = e
	b.byAddr.Store(e.addr, e)
	return e, nil
}

// Forget drops the keyed endpoint of key, so that packets from its address
// are no longer attributed to it. Node calls it when a peer is removed.
func (b *Bind) Forget(key proto.Key) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.forgetLocked(key)
}

func (b *Bind) forgetLocked(key proto.Key) {
	old, ok := b.byKey[key]
	if !ok {
		return
	}
	delete(b.byKey, key)
	b.byAddr.CompareAndDelete(old.addr, old)
}

// FormatEndpoint returns the keyed endpoint form ParseEndpoint accepts, for
// a UAPI "endpoint=" line. It returns "" when addrs is empty.
func FormatEndpoint(key proto.Key, addrs []netip.AddrPort) string {
	if len(addrs) == 0 {
		return ""
	}
	var sb strings.Builder
	sb.WriteString(key.Hex())
	sb.WriteByte('@')
	for i, a := range addrs {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(a.String())
	}
	return sb.String()
}

// normalize unmaps IPv4-mapped IPv6 addresses, so one peer address has one
// form whichever socket it arrives on.
func normalize(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Endpoint is a peer address as the Bind sees it: the peer's public key when
// known, its candidate addresses, and the path packets currently take.
// Endpoints are immutable once returned by the Bind.
type Endpoint struct {
	key        proto.Key        // zero when learned from an unknown source
	candidates []netip.AddrPort // direct candidates, current first
	addr       netip.AddrPort   // current direct address
	direct     *conn.StdNetEndpoint
}

var _ conn.Endpoint = (*Endpoint)(nil)

// Key returns the peer's public key, or the zero key when the endpoint was
// learned from a packet of an unknown source.
func (e *Endpoint) Key() proto.Key { return e.key }

// Path returns the path packets to this endpoint take.
func (e *Endpoint) Path() Path { return PathDirect }

// AddrPort returns the current direct address.
func (e *Endpoint) AddrPort() netip.AddrPort { return e.addr }

// Candidates returns the direct addresses known for the peer, current first.
// The caller must not modify the result.
func (e *Endpoint) Candidates() []netip.AddrPort { return e.candidates }

func (e *Endpoint) String() string {
	if e.key.IsZero() {
		return e.addr.String()
	}
	return e.key.ShortString() + "@" + e.addr.String()
}

// ClearSrc implements conn.Endpoint.
func (e *Endpoint) ClearSrc() {
	// Keyed endpoints are shared between received packets and carry no
	// sticky source; only unshared ones delegate.
	if e.key.IsZero() && e.direct != nil {
		e.direct.ClearSrc()
	}
}

// SrcToString implements conn.Endpoint.
func (e *Endpoint) SrcToString() string {
	if e.direct == nil {
		return ""
	}
	return e.direct.SrcToString()
}

// DstToString implements conn.Endpoint. It returns the current direct
// address, as wg(8) shows it.
func (e *Endpoint) DstToString() string { return e.addr.String() }

// DstToBytes implements conn.Endpoint; the bytes feed the mac2 cookie.
func (e *Endpoint) DstToBytes() []byte {
	b, _ := e.addr.MarshalBinary()
	return b
}

// DstIP implements conn.Endpoint.
func (e *Endpoint) DstIP() netip.Addr { return e.addr.Addr() }

// SrcIP implements conn.Endpoint.
func (e *Endpoint) SrcIP() netip.Addr {
	if e.direct == nil {
		return netip.Addr{}
	}
	return e.direct.SrcIP()
}
