package node

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/clustral/clustral/proto"
)

// Path is the way a WireGuard packet travels between this node and a peer.
type Path uint8

const (
	// PathDirect is UDP straight to the peer's endpoint.
	PathDirect Path = iota
	// PathRelay is the coordinator's relay: packets travel inside an HTTPS
	// connection to the coordinator (proto.RelayPath), addressed by the
	// peer's public key.
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

// Direct-path probing defaults; see Bind.
const (
	// DefaultProbeInterval is how often a peer without a working direct
	// path is probed.
	DefaultProbeInterval = 5 * time.Second
	// DefaultDirectProbeInterval is how often a working direct path is
	// probed to tell that it still works.
	DefaultDirectProbeInterval = 2 * time.Second
	// DefaultDirectTimeout is how long a direct path may go without a probe
	// answer before its peer falls back to the relay.
	DefaultDirectTimeout = 3 * DefaultDirectProbeInterval
	// maxLearned bounds the addresses learned per peer from its pings.
	maxLearned = 4
	// maxPending bounds the unanswered pings remembered per peer.
	maxPending = 64
)

// PathStats counts the traffic of one path. Bytes are WireGuard datagram
// bytes (ciphertext), without UDP/IP headers or relay framing.
type PathStats struct {
	TxPackets uint64
	TxBytes   uint64
	RxPackets uint64
	RxBytes   uint64
	// Dropped counts datagrams the path's transport refused (the relay's
	// queue was full).
	Dropped uint64
}

type pathCounters struct {
	txPackets, txBytes, rxPackets, rxBytes, dropped atomic.Uint64
}

func (c *pathCounters) load() PathStats {
	return PathStats{
		TxPackets: c.txPackets.Load(),
		TxBytes:   c.txBytes.Load(),
		RxPackets: c.rxPackets.Load(),
		RxBytes:   c.rxBytes.Load(),
		Dropped:   c.dropped.Load(),
	}
}

// relayLink is the transmit side of the relay path (*relayClient).
type relayLink interface {
	// up reports whether the relay connection is open.
	up() bool
	// send queues one datagram for dst and reports whether it was queued;
	// it copies pkt.
	send(dst proto.Key, pkt []byte) bool
}

// relayPacket is a datagram received from the relay, in a pooled buffer,
// or a held handshake initiation on its way to wireguard-go (releaseHeld).
type relayPacket struct {
	src proto.Key
	buf *[]byte
	n   int // datagram bytes at (*buf)[off:off+n]
	off int
	// ep, when set, is the endpoint to report the datagram with: a held
	// initiation, already counted on the path it arrived by.
	ep conn.Endpoint
}

// Bind is the node's packet transport: a conn.Bind that wireguard-go sends
// and receives WireGuard datagrams through, and the one place where the path
// to each peer, direct UDP or the coordinator's relay, is chosen.
//
// Besides "ip:port", ParseEndpoint accepts the keyed form FormatEndpoint
// writes; a keyed *Endpoint carries the peer's key and candidate addresses
// and shares the peer's path state. Send uses a confirmed direct address,
// else the relay when it is up, else the first candidate. While open, the
// Bind probes every keyed peer's candidates with authenticated probes
// (timed by ProbeInterval, DirectProbeInterval and DirectTimeout), and
// consumes the probes it receives; wireguard-go never sees them. Received
// datagrams are reported with the keyed *Endpoint of their source when it
// is known. It also orders first handshakes: it holds the handshake
// initiations of peers wireguard-go is not configured with yet, and drops
// those that would cross this node's own (handshake.go). docs/design.md §6
// "Relay policy" and "First handshakes" explain the choices.
//
// A Bind is safe for concurrent use. It is owned by the wireguard-go device
// it is given to, which opens and closes it. Close stops probing and
// returns once the probing goroutine has; the relay connection is not the
// Bind's and stays.
type Bind struct {
	udp  conn.Bind        // *conn.StdNetBind
	self proto.Key        // this node's key, carried in probes; set by setKey
	priv *ecdh.PrivateKey // this node's key, for probe keys; set by setKey
	log  *slog.Logger

	// ProbeInterval, DirectProbeInterval and DirectTimeout time the
	// probing. Set them before Open; zero means the defaults.
	ProbeInterval       time.Duration
	DirectProbeInterval time.Duration
	DirectTimeout       time.Duration

	// peers is the keyed endpoint and path state of each peer. Its lock
	// is taken by ParseEndpoint, Forget, PathStatus, endpointOf,
	// handleProbe and probe. It is never held while sending, and the only
	// lock taken under it is a peerPath's.
	peers struct {
		sync.Mutex
		byKey map[proto.Key]*Endpoint
		paths map[proto.Key]*peerPath
		// ready holds the peers wireguard-go is configured with
		// (peerReady), and whether this node leads their handshakes.
		ready map[proto.Key]bool
	}

	// held keeps handshake initiations from senders the node does not
	// know yet, until its map names them (see hold); its lock is taken
	// only for handshake initiations and by releaseHeld.
	held struct {
		sync.Mutex
		bySrc map[heldSrc]heldInit
	}

	// byAddr maps a normalized direct address to the keyed endpoint it
	// belongs to, for receiveDirect, which reads it on every batch without
	// a lock. ParseEndpoint and Forget write it under peers' lock, so it
	// agrees with peers.byKey; a confirming pong adds an entry on its own.
	byAddr sync.Map // netip.AddrPort → *Endpoint

	// sockets is what Open sets up and Close tears down; Open, Close and
	// Port take its lock.
	sockets struct {
		sync.Mutex
		port uint16
		done chan struct{} // closed by Close; nil while closed
	}
	// probing counts the probeLoop goroutine Open starts; Close waits for
	// it.
	probing sync.WaitGroup

	relay   atomic.Pointer[relayLinkBox] // set by setRelay; nil: no relay
	relayIn chan relayPacket             // deliverRelay → receiveRelay
	wake    chan struct{}                // kick → probeLoop

	// stun holds the endpoint-discovery requests waiting for their
	// answer, by transaction ID; Discover and handleProbe take its lock.
	stun struct {
		sync.Mutex
		wait map[[12]byte]chan netip.AddrPort
	}

	stats [numPaths]pathCounters // atomic
}

// relayLinkBox lets an interface value live in an atomic.Pointer.
type relayLinkBox struct{ relayLink }

var _ conn.Bind = (*Bind)(nil)

// setKey gives the Bind this node's WireGuard private key: its public half
// goes in every probe, and with each peer's public key it derives the key
// that authenticates their probes. Call it before Open and before the
// first ParseEndpoint.
func (b *Bind) setKey(priv proto.Key) error {
	k, err := ecdh.X25519().NewPrivateKey(priv[:])
	if err != nil {
		return fmt.Errorf("bind key: %w", err)
	}
	b.priv = k
	b.self = proto.Key(k.PublicKey().Bytes())
	return nil
}

// NewBind returns a Bind carrying UDP on the default sockets of the platform.
func NewBind() *Bind {
	b := &Bind{
		udp:     conn.NewStdNetBind(),
		log:     slog.Default(),
		relayIn: make(chan relayPacket, 1024),
		wake:    make(chan struct{}, 1),
	}
	b.peers.byKey = make(map[proto.Key]*Endpoint)
	b.peers.paths = make(map[proto.Key]*peerPath)
	b.peers.ready = make(map[proto.Key]bool)
	b.held.bySrc = make(map[heldSrc]heldInit)
	b.stun.wait = make(map[[12]byte]chan netip.AddrPort)
	return b
}

// packetBufSize is the size of the pooled buffers relayed datagrams and
// frames travel in; larger ones get a buffer of their own.
const packetBufSize = 2048

var packetBufs = sync.Pool{New: func() any {
	b := make([]byte, packetBufSize)
	return &b
}}

// getPacketBuf returns a buffer of length n.
func getPacketBuf(n int) *[]byte {
	if n > packetBufSize {
		b := make([]byte, n)
		return &b
	}
	b := packetBufs.Get().(*[]byte)
	*b = (*b)[:n]
	return b
}

func putPacketBuf(b *[]byte) {
	if cap(*b) == packetBufSize {
		packetBufs.Put(b)
	}
}

func (b *Bind) probeInterval() time.Duration {
	return orDefault(b.ProbeInterval, DefaultProbeInterval)
}

func (b *Bind) directProbeInterval() time.Duration {
	return orDefault(b.DirectProbeInterval, DefaultDirectProbeInterval)
}

func (b *Bind) directTimeout() time.Duration {
	return orDefault(b.DirectTimeout, DefaultDirectTimeout)
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Open implements conn.Bind. It opens the UDP sockets on port (0 picks a
// random one) and returns their receive functions and the relay's, and
// starts probing, until Close.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.udp.Open(port)
	if err != nil {
		return nil, 0, err
	}
	done := make(chan struct{})
	b.sockets.Lock()
	b.sockets.port = actual
	b.sockets.done = done
	b.sockets.Unlock()
	wrapped := make([]conn.ReceiveFunc, 0, len(fns)+1)
	for _, fn := range fns {
		wrapped = append(wrapped, b.receiveDirect(fn))
	}
	wrapped = append(wrapped, b.receiveRelay(done))
	b.probing.Go(func() { b.probeLoop(done) })
	return wrapped, actual, nil
}

// Port reports the UDP port the Bind was last opened on, or 0.
func (b *Bind) Port() uint16 {
	b.sockets.Lock()
	defer b.sockets.Unlock()
	return b.sockets.port
}

// Close implements conn.Bind. It closes the UDP sockets, ends the relay's
// receive function and stops probing, and returns once the probing
// goroutine has. The relay connection stays: it belongs to RunRelay.
func (b *Bind) Close() error {
	b.sockets.Lock()
	if b.sockets.done != nil {
		close(b.sockets.done)
		b.sockets.done = nil
	}
	b.sockets.Unlock()
	err := b.udp.Close()
	b.probing.Wait()
	return err
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

// setRelay makes l the relay path; nil removes it.
func (b *Bind) setRelay(l relayLink) {
	if l == nil {
		b.relay.Store(nil)
		return
	}
	b.relay.Store(&relayLinkBox{l})
	b.kick()
}

func (b *Bind) relayLink() relayLink {
	if box := b.relay.Load(); box != nil && box.up() {
		return box.relayLink
	}
	return nil
}

// kick makes the probe loop run now.
func (b *Bind) kick() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
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
			inner, ok := eps[i].(*conn.StdNetEndpoint)
			if !ok {
				continue
			}
			ap := normalize(inner.AddrPort)
			if proto.IsProbe(bufs[i][:sizes[i]]) {
				b.handleProbe(bufs[i][:sizes[i]], ap, proto.Key{})
				sizes[i] = 0 // not for wireguard-go
				continue
			}
			packets++
			bytes += uint64(sizes[i])
			if lastEP == nil || ap != lastAP {
				lastAP = ap
				if v, ok := b.byAddr.Load(ap); ok {
					lastEP = v.(*Endpoint)
				} else {
					lastEP = nil
				}
			}
			if isInitiation(bufs[i][:sizes[i]]) && !b.initiationIn(bufs[i][:sizes[i]], lastEP, heldSrc{addr: ap}) ||
				lastEP != nil && lastEP.path != nil && isResponse(bufs[i][:sizes[i]]) && !lastEP.path.responseIn(bufs[i][:sizes[i]]) {
				sizes[i] = 0 // held, or dropped: not for wireguard-go now
				continue
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

// deliverRelay hands a datagram received from the relay, from src, to the
// relay's receive function. It takes ownership of buf, in which the
// datagram is at [off:off+n]. When wireguard-go falls behind, the datagram
// is dropped.
func (b *Bind) deliverRelay(src proto.Key, buf *[]byte, off, n int) {
	pkt := (*buf)[off : off+n]
	if proto.IsProbe(pkt) {
		b.handleProbe(pkt, netip.AddrPort{}, src)
		putPacketBuf(buf)
		return
	}
	if isInitiation(pkt) || isResponse(pkt) {
		b.peers.Lock()
		e := b.peers.byKey[src]
		b.peers.Unlock()
		if isInitiation(pkt) && !b.initiationIn(pkt, e, heldSrc{key: src}) ||
			isResponse(pkt) && e != nil && e.path != nil && !e.path.responseIn(pkt) {
			putPacketBuf(buf)
			return
		}
	}
	select {
	case b.relayIn <- relayPacket{src: src, buf: buf, off: off, n: n}:
	default:
		b.stats[PathRelay].dropped.Add(1)
		putPacketBuf(buf)
	}
}

func (b *Bind) receiveRelay(done <-chan struct{}) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		var p relayPacket
		select {
		case p = <-b.relayIn:
		case <-done:
			return 0, net.ErrClosed
		}
		n, relayed, bytes := 0, 0, 0
		for {
			sizes[n] = copy(bufs[n], (*p.buf)[p.off:p.off+p.n])
			putPacketBuf(p.buf)
			if p.ep != nil {
				eps[n] = p.ep
			} else {
				eps[n] = b.endpointOf(p.src)
				relayed++
				bytes += sizes[n]
			}
			n++
			if n == len(bufs) {
				break
			}
			select {
			case p = <-b.relayIn:
				continue
			default:
			}
			break
		}
		c := &b.stats[PathRelay]
		c.rxPackets.Add(uint64(relayed))
		c.rxBytes.Add(uint64(bytes))
		return n, nil
	}
}

// endpointOf returns the keyed endpoint of key, or a relay-only one when
// the key has none.
func (b *Bind) endpointOf(key proto.Key) *Endpoint {
	b.peers.Lock()
	e := b.peers.byKey[key]
	b.peers.Unlock()
	if e == nil {
		e = &Endpoint{key: key, bind: b}
	}
	return e
}

// Send implements conn.Bind. It sends bufs along ep's current path. On the
// direct path it narrows the capacity of the slices in bufs (see capGSO),
// never their length or bytes.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*Endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	direct := e.direct
	if e.path != nil {
		// A handshake response takes a confirmed direct path, else the
		// way its initiation came (handshake.go).
		via, answer := e.path.handshakeOut(bufs)
		if d := e.path.cur.Load(); d != nil {
			direct = d
		} else if answer && via.IsValid() {
			direct = &conn.StdNetEndpoint{AddrPort: via}
		} else if r := b.relayLink(); r != nil {
			return b.sendRelay(r, e.key, bufs)
		}
	}
	if direct == nil {
		return fmt.Errorf("send to %v: %w", e, ErrNoPath)
	}
	capGSO(bufs)
	if err := b.udp.Send(bufs, direct); err != nil {
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

// maxGSOBytes bounds the UDP payload of one GSO message the sockets send:
// 64 KiB less room for the IP, UDP and link-layer headers. Linux segments a
// GSO packet in software, before the device, when its length with the
// link-layer header reaches the device's gso_max_size (64 KiB on loopback
// and most NICs), while StdNetBind coalesces datagrams up to the IP limit
// (65,507 bytes for IPv4). A message between the two crosses the link as
// separate datagrams: 46 of 1,424 bytes (the netstack's TCP segments at
// MTU 1420) make 65,504, and a receiver on loopback then reads them one by
// one, two per receive call, instead of as one GRO message.
const maxGSOBytes = 1<<16 - 128

// capGSO limits the capacity of each buffer in bufs to maxGSOBytes,
// leaving lengths and bytes alone. StdNetBind coalesces a run of datagrams
// into the first one's spare capacity, and only while they fit, so no GSO
// message it sends grows past maxGSOBytes.
func capGSO(bufs [][]byte) {
	for i, buf := range bufs {
		if cap(buf) > maxGSOBytes && len(buf) <= maxGSOBytes {
			bufs[i] = buf[:len(buf):maxGSOBytes]
		}
	}
}

func (b *Bind) sendRelay(r relayLink, key proto.Key, bufs [][]byte) error {
	var n, sent, dropped uint64
	for _, buf := range bufs {
		if r.send(key, buf) {
			sent++
			n += uint64(len(buf))
		} else {
			dropped++
		}
	}
	c := &b.stats[PathRelay]
	c.txPackets.Add(sent)
	c.txBytes.Add(n)
	c.dropped.Add(dropped)
	return nil // like UDP: a datagram the relay could not take is lost
}

// ParseEndpoint implements conn.Bind. It accepts "ip:port", the keyed form
// "<64 hex digits of the peer's public key>@ip:port[,ip:port...]" (see
// FormatEndpoint), and the relay-only keyed form "<key hex>@". Parsing a
// keyed endpoint registers it: its candidates are probed, and packets
// received from them are attributed to it, until it is replaced by a newer
// keyed endpoint of the same key or forgotten (Forget). The peer's path
// state (a confirmed direct address) carries over to the newer endpoint.
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
	e := &Endpoint{key: key, bind: b}
	if addrs != "" {
		for a := range strings.SplitSeq(addrs, ",") {
			ap, err := netip.ParseAddrPort(a)
			if err != nil {
				return nil, fmt.Errorf("parse endpoint %q: %w", s, err)
			}
			e.candidates = append(e.candidates, normalize(ap))
		}
		e.addr = e.candidates[0]
		e.direct = &conn.StdNetEndpoint{AddrPort: e.addr}
	}

	b.peers.Lock()
	pp := b.peers.paths[key]
	if pp == nil {
		pp = &peerPath{key: key, pending: map[[12]byte]pendingPing{}}
		if b.priv != nil {
			var err error
			pp.auth, err = newProbeKey(b.priv, key)
			pp.authOK = err == nil
			if err != nil {
				b.log.Warn("no direct path to a peer whose key is not a valid X25519 public key", "peer", key.ShortString(), "err", err)
			}
		}
		b.peers.paths[key] = pp
	}
	e.path = pp
	b.unindexLocked(key)
	b.peers.byKey[key] = e
	pp.mu.Lock()
	pp.lead, pp.ready = b.peers.ready[key]
	pp.published = e.candidates
	if cur := pp.cur.Load(); cur != nil {
		b.byAddr.Store(cur.AddrPort, e)
	}
	pp.urgent = true
	pp.mu.Unlock()
	for _, ap := range e.candidates {
		b.byAddr.Store(ap, e)
	}
	b.peers.Unlock()
	b.kick()
	return e, nil
}

// Forget drops the keyed endpoint and the path state of key, so that
// packets from its addresses are no longer attributed to it and it is no
// longer probed. Node calls it when a peer is removed.
func (b *Bind) Forget(key proto.Key) {
	b.peers.Lock()
	defer b.peers.Unlock()
	b.unindexLocked(key)
	delete(b.peers.byKey, key)
	if pp := b.peers.paths[key]; pp != nil {
		pp.mu.Lock()
		pp.dropCrossedLocked()
		pp.mu.Unlock()
	}
	delete(b.peers.paths, key)
	delete(b.peers.ready, key)
}

// unindexLocked removes the byAddr entries of key's endpoint. b.peers must
// be locked.
func (b *Bind) unindexLocked(key proto.Key) {
	old, ok := b.peers.byKey[key]
	if !ok {
		return
	}
	for _, ap := range old.candidates {
		b.byAddr.CompareAndDelete(ap, old)
	}
	if cur := old.path.cur.Load(); cur != nil {
		b.byAddr.CompareAndDelete(cur.AddrPort, old)
	}
}

// PathStatus is the state of the path to one peer.
type PathStatus struct {
	// Path is the path packets take now.
	Path Path
	// Addr is the confirmed direct address; invalid when there is none.
	Addr netip.AddrPort
	// RTT is the last probe round trip on Path, 0 when none was measured.
	RTT time.Duration
	// DirectSince is when the direct path was confirmed, zero when there
	// is none.
	DirectSince time.Time
}

// PathStatus reports the path to the peer with key, false when the Bind
// has no keyed endpoint for it.
func (b *Bind) PathStatus(key proto.Key) (PathStatus, bool) {
	b.peers.Lock()
	e := b.peers.byKey[key]
	b.peers.Unlock()
	if e == nil {
		return PathStatus{}, false
	}
	pp := e.path
	pp.mu.Lock()
	defer pp.mu.Unlock()
	ps := PathStatus{Path: e.Path()}
	if cur := pp.cur.Load(); cur != nil {
		ps.Addr, ps.RTT, ps.DirectSince = cur.AddrPort, pp.rtt, pp.directSince
	} else if ps.Path == PathRelay {
		ps.RTT = pp.relayRTT
	}
	return ps, true
}

// Discover asks the endpoint-discovery service at server (the
// coordinator's, proto.RegisterResponse.STUN) which address and port this
// node's UDP socket appears from, pinging from the WireGuard socket, so the
// answer is the NAT mapping WireGuard traffic gets. It retries until an
// answer comes or ctx is done.
func (b *Bind) Discover(ctx context.Context, server netip.AddrPort) (netip.AddrPort, error) {
	p := proto.Probe{Type: proto.ProbePing, Key: b.self}
	rand.Read(p.TxID[:])
	ch := make(chan netip.AddrPort, 1)
	b.stun.Lock()
	b.stun.wait[p.TxID] = ch
	b.stun.Unlock()
	defer func() {
		b.stun.Lock()
		delete(b.stun.wait, p.TxID)
		b.stun.Unlock()
	}()
	pkt, _ := p.AppendBinary(nil)
	dst := &conn.StdNetEndpoint{AddrPort: normalize(server)}
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		if err := b.udp.Send([][]byte{pkt}, dst); err != nil && !errors.Is(err, net.ErrClosed) {
			b.log.Debug("endpoint discovery ping", "server", server, "err", err)
		}
		select {
		case ap := <-ch:
			return ap, nil
		case <-ctx.Done():
			return netip.AddrPort{}, fmt.Errorf("endpoint discovery at %s: %w", server, ctx.Err())
		case <-t.C:
		}
	}
}

// handleProbe handles a probe from the direct address from, or, when from
// is invalid, from the relay, sent by relayed.
func (b *Bind) handleProbe(pkt []byte, from netip.AddrPort, relayed proto.Key) {
	p, ok := proto.ParseProbe(pkt)
	if !ok {
		return
	}
	viaRelay := !from.IsValid()
	if viaRelay && p.Key != relayed {
		return // the relay vouches for the sender; the probe must agree
	}
	switch p.Type {
	case proto.ProbePing:
		if p.Key.IsZero() || p.Key == b.self {
			return
		}
		b.peers.Lock()
		pp := b.peers.paths[p.Key]
		b.peers.Unlock()
		if pp == nil || !pp.authOK || !pp.auth.verify(pkt) {
			return // not a peer, or not from it: answer no strangers
		}
		out := pp.auth.seal(nil, proto.Probe{Type: proto.ProbePong, TxID: p.TxID, Key: b.self, Observed: from})
		if viaRelay {
			if r := b.relayLink(); r != nil {
				r.send(p.Key, out)
			}
			return
		}
		b.udp.Send([][]byte{out}, &conn.StdNetEndpoint{AddrPort: from})
		if pp.learn(from) {
			b.kick()
		}
	case proto.ProbePong:
		if p.Key.IsZero() {
			if viaRelay {
				return
			}
			b.stun.Lock()
			ch := b.stun.wait[p.TxID]
			b.stun.Unlock()
			if ch != nil && p.Observed.IsValid() {
				select {
				case ch <- p.Observed:
				default:
				}
			}
			return
		}
		b.peers.Lock()
		e := b.peers.byKey[p.Key]
		b.peers.Unlock()
		if e == nil || !e.path.authOK || !e.path.auth.verify(pkt) {
			return
		}
		if e.path.pong(p.TxID, from, time.Now()) {
			b.byAddr.Store(from, e)
			b.log.Info("direct path up", "peer", p.Key.ShortString(), "addr", from, "rtt", e.path.lastRTT())
		}
	}
}

// probeLoop probes until done is closed. Open starts it, counted in
// b.probing.
func (b *Bind) probeLoop(done <-chan struct{}) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		case <-b.wake:
		}
		now := time.Now()
		b.probe(now)
		b.releaseHeld(now, false)
	}
}

// probe sends the pings that are due.
func (b *Bind) probe(now time.Time) {
	b.peers.Lock()
	paths := make([]*peerPath, 0, len(b.peers.paths))
	for _, pp := range b.peers.paths {
		paths = append(paths, pp)
	}
	b.peers.Unlock()
	relay := b.relayLink()
	var pkt []byte
	for _, pp := range paths {
		if !pp.authOK {
			continue // its probes could not be told from forgeries
		}
		targets, viaRelay, lost := pp.due(now, b, relay != nil)
		if lost.IsValid() {
			b.log.Info("direct path lost; falling back to the relay", "peer", pp.key.ShortString(), "addr", lost)
		}
		for _, t := range targets {
			pkt = pp.auth.seal(pkt[:0], proto.Probe{Type: proto.ProbePing, TxID: t.txid, Key: b.self})
			b.udp.Send([][]byte{pkt}, &conn.StdNetEndpoint{AddrPort: t.to})
		}
		if viaRelay != nil {
			pkt = pp.auth.seal(pkt[:0], proto.Probe{Type: proto.ProbePing, TxID: *viaRelay, Key: b.self})
			relay.send(pp.key, pkt)
		}
	}
}

// peerPath is the path state of one peer, shared by its keyed endpoints.
type peerPath struct {
	key proto.Key
	// auth authenticates the probes exchanged with the peer; authOK is
	// false when it could not be derived, and then the peer is not probed
	// and its probes are dropped. Both are set before the peerPath is
	// shared and never change.
	auth   probeKey
	authOK bool
	// cur is the confirmed direct address; nil while there is none. Read
	// without mu on every Send.
	cur atomic.Pointer[conn.StdNetEndpoint]

	mu          sync.Mutex
	published   []netip.AddrPort // from the map
	learned     []netip.AddrPort // pinged us from there, oldest first
	pending     map[[12]byte]pendingPing
	urgent      bool // probe at the next round, whatever the interval
	lastPing    time.Time
	curPong     time.Time // last pong from cur
	directSince time.Time
	rtt         time.Duration // last direct RTT
	relayRTT    time.Duration // last relayed RTT

	// Handshake order (handshake.go): ready and lead are peerReady's;
	// initAt is when this node last sent the peer a handshake initiation;
	// answerVia is where the last initiation wireguard-go got from the
	// peer came from (invalid: the relay), at answerAt.
	ready     bool
	lead      bool
	initAt    time.Time
	answerVia netip.AddrPort
	answerAt  time.Time
	// initIdx is the sender index of that initiation, answered whether a
	// response to it came; abandoned is the index of an initiation given
	// up for the peer's crossing one (releaseCrossed). crossed is the
	// peer's crossing initiation held meanwhile (holdCrossed), from
	// crossedSrc to crossedEP, released by crossTimer.
	initIdx    uint32
	answered   bool
	abandoned  uint32
	gaveUp     bool // abandoned is set
	crossed    []byte
	crossedSrc heldSrc
	crossedEP  *Endpoint
	crossTimer *time.Timer
}

// pingBackAfter bounds how often a ping from a peer without a direct path
// makes this side probe at once.
const pingBackAfter = 50 * time.Millisecond

type pendingPing struct {
	to netip.AddrPort // invalid: sent over the relay
	at time.Time
}

type pingTarget struct {
	to   netip.AddrPort
	txid [12]byte
}

// learn adds addr, from which the peer pinged us, to the candidates. It
// reports whether to probe now: the address is new, or there is no direct
// path yet and the last round of pings is not recent. Pinging back at once
// lets the second side of a pair confirm the direct path in one round trip
// instead of a probe interval later.
func (pp *peerPath) learn(addr netip.AddrPort) bool {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if slices.Contains(pp.published, addr) || slices.Contains(pp.learned, addr) {
		if pp.cur.Load() == nil && time.Since(pp.lastPing) > pingBackAfter {
			pp.urgent = true
			return true
		}
		return false
	}
	if len(pp.learned) == maxLearned {
		pp.learned = slices.Delete(pp.learned, 0, 1)
	}
	pp.learned = append(pp.learned, addr)
	if pp.cur.Load() == nil {
		pp.urgent = true
	}
	return true
}

// due returns the pings to send now, and drops a direct path that has gone
// silent (returning its address as lost).
func (pp *peerPath) due(now time.Time, b *Bind, relayUp bool) (targets []pingTarget, viaRelay *[12]byte, lost netip.AddrPort) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	cur := pp.cur.Load()
	if cur != nil && now.Sub(pp.curPong) > b.directTimeout() {
		pp.cur.Store(nil)
		lost, cur = cur.AddrPort, nil
		pp.directSince = time.Time{}
		pp.urgent = true
	}
	interval := b.probeInterval()
	if cur != nil {
		interval = b.directProbeInterval()
	}
	if !pp.urgent && now.Sub(pp.lastPing) < interval {
		return nil, nil, lost
	}
	pp.urgent = false
	pp.lastPing = now
	for id, p := range pp.pending {
		if now.Sub(p.at) > 2*b.directTimeout() || len(pp.pending) > maxPending {
			delete(pp.pending, id)
		}
	}
	add := func(to netip.AddrPort) {
		for _, t := range targets {
			if t.to == to {
				return
			}
		}
		t := pingTarget{to: to}
		rand.Read(t.txid[:])
		pp.pending[t.txid] = pendingPing{to: to, at: now}
		targets = append(targets, t)
	}
	if cur != nil {
		add(cur.AddrPort)
	}
	for _, a := range pp.published {
		add(a)
	}
	for _, a := range pp.learned {
		add(a)
	}
	if cur == nil && relayUp {
		var id [12]byte
		rand.Read(id[:])
		pp.pending[id] = pendingPing{at: now}
		viaRelay = &id
	}
	return targets, viaRelay, lost
}

// pong records the answer to ping txid, from addr (invalid: over the
// relay). It reports whether addr became the direct path.
func (pp *peerPath) pong(txid [12]byte, from netip.AddrPort, now time.Time) bool {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	p, ok := pp.pending[txid]
	if !ok || p.to != from {
		return false
	}
	delete(pp.pending, txid)
	rtt := now.Sub(p.at)
	if !from.IsValid() {
		pp.relayRTT = rtt
		return false
	}
	cur := pp.cur.Load()
	switch {
	case cur == nil:
		pp.cur.Store(&conn.StdNetEndpoint{AddrPort: from})
		pp.curPong, pp.rtt, pp.directSince = now, rtt, now
		return true
	case cur.AddrPort == from:
		pp.curPong, pp.rtt = now, rtt
	}
	return false
}

func (pp *peerPath) lastRTT() time.Duration {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.rtt
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
// Endpoints are immutable once returned by the Bind, except for the path
// state keyed endpoints share.
type Endpoint struct {
	key        proto.Key        // zero when learned from an unknown source
	candidates []netip.AddrPort // direct candidates from the map
	addr       netip.AddrPort   // first candidate, or the packet's source
	direct     *conn.StdNetEndpoint
	path       *peerPath // nil for keyless and unregistered endpoints
	bind       *Bind
}

var _ conn.Endpoint = (*Endpoint)(nil)

// Key returns the peer's public key, or the zero key when the endpoint was
// learned from a packet of an unknown source.
func (e *Endpoint) Key() proto.Key { return e.key }

// Path returns the path packets to this endpoint take now.
func (e *Endpoint) Path() Path {
	if e.path == nil || e.path.cur.Load() != nil {
		return PathDirect
	}
	if e.bind != nil && e.bind.relayLink() != nil || e.direct == nil {
		return PathRelay
	}
	return PathDirect
}

// AddrPort returns the current direct address: the confirmed one, else
// the first candidate. It is invalid for a relay-only endpoint.
func (e *Endpoint) AddrPort() netip.AddrPort {
	if e.path != nil {
		if cur := e.path.cur.Load(); cur != nil {
			return cur.AddrPort
		}
	}
	return e.addr
}

// Candidates returns the direct addresses the map gave for the peer.
// The caller must not modify the result.
func (e *Endpoint) Candidates() []netip.AddrPort { return e.candidates }

func (e *Endpoint) String() string {
	if e.key.IsZero() {
		return e.addr.String()
	}
	if ap := e.AddrPort(); ap.IsValid() {
		return e.key.ShortString() + "@" + ap.String()
	}
	return e.key.ShortString() + "@relay"
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
// address, as wg(8) shows it, or "" for a relay-only endpoint.
func (e *Endpoint) DstToString() string {
	if ap := e.AddrPort(); ap.IsValid() {
		return ap.String()
	}
	return ""
}

// DstToBytes implements conn.Endpoint; the bytes feed the mac2 cookie. A
// relay-only endpoint gives its key.
func (e *Endpoint) DstToBytes() []byte {
	if ap := e.AddrPort(); ap.IsValid() {
		b, _ := ap.MarshalBinary()
		return b
	}
	return e.key[:]
}

// DstIP implements conn.Endpoint.
func (e *Endpoint) DstIP() netip.Addr { return e.AddrPort().Addr() }

// SrcIP implements conn.Endpoint.
func (e *Endpoint) SrcIP() netip.Addr {
	if e.direct == nil {
		return netip.Addr{}
	}
	return e.direct.SrcIP()
}
