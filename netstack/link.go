package netstack

import (
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// outQueueLen bounds the packets (GSO super-packets count once) waiting for
// wireguard-go to read them. When wireguard-go falls behind, further packets
// are dropped and TCP backs off, as on a real link with a full qdisc.
const outQueueLen = 1024

// gsoMaxSize is the largest TCP segment gVisor hands the link at once. Such
// a segment is cut to MSS-sized packets in device.Read.
const gsoMaxSize = 1 << 16

// endpoint is the gVisor link endpoint of a Stack. gVisor writes outbound
// packets into a queue that device.Read drains; device.Write delivers
// inbound packets to the attached dispatcher.
//
// The endpoint announces host GSO, so TCP hands it segments up to
// gsoMaxSize with only the pseudo-header checksum filled in; device.Read
// segments them and completes the checksums. It also announces receive
// checksum offload: every inbound packet was authenticated by WireGuard
// (ChaCha20-Poly1305) end to end, which is strictly stronger than the
// Internet checksum, so checking it again would only burn CPU.
type endpoint struct {
	mtu atomic.Uint32

	dmu        sync.RWMutex
	dispatcher stack.NetworkDispatcher

	mu     sync.Mutex
	queue  []*stack.PacketBuffer // ring buffer
	head   int                   // index of the oldest packet
	n      int                   // packets in queue
	closed bool

	ready chan struct{} // one token when the queue went non-empty
	done  chan struct{} // closed by close

	outPackets, outBytes, outDropped atomic.Uint64
	inPackets, inBytes, inDropped    atomic.Uint64
}

var (
	_ stack.LinkEndpoint = (*endpoint)(nil)
	_ stack.GSOEndpoint  = (*endpoint)(nil)
)

func newEndpoint(mtu uint32) *endpoint {
	e := &endpoint{
		queue: make([]*stack.PacketBuffer, outQueueLen),
		ready: make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
	e.mtu.Store(mtu)
	return e
}

// WritePackets implements stack.LinkWriter. It queues pkts for
// device.Read and never blocks.
func (e *endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return 0, &tcpip.ErrClosedForSend{}
	}
	wasEmpty := e.n == 0
	written := 0
	for _, pkt := range pkts.AsSlice() {
		if e.n == len(e.queue) {
			break
		}
		e.queue[(e.head+e.n)%len(e.queue)] = pkt.IncRef()
		e.n++
		written++
	}
	e.mu.Unlock()

	if wasEmpty && written > 0 {
		select {
		case e.ready <- struct{}{}:
		default:
		}
	}
	if dropped := pkts.Len() - written; dropped > 0 {
		e.outDropped.Add(uint64(dropped))
		if written == 0 {
			return 0, &tcpip.ErrNoBufferSpace{}
		}
	}
	return written, nil
}

// pop removes up to len(dst) packets from the queue into dst without
// blocking and reports how many it took and whether the endpoint is
// closed. The caller owns the references of the packets it gets.
func (e *endpoint) pop(dst []*stack.PacketBuffer) (int, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := 0
	for k < len(dst) && e.n > 0 {
		dst[k] = e.queue[e.head]
		e.queue[e.head] = nil
		e.head = (e.head + 1) % len(e.queue)
		e.n--
		k++
	}
	return k, e.closed
}

// close drops the queued packets and wakes a blocked reader. It is
// idempotent.
func (e *endpoint) close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	for e.n > 0 {
		e.queue[e.head].DecRef()
		e.queue[e.head] = nil
		e.head = (e.head + 1) % len(e.queue)
		e.n--
	}
	e.mu.Unlock()
	close(e.done)
}

func (e *endpoint) stats() Stats {
	return Stats{
		OutPackets: e.outPackets.Load(),
		OutBytes:   e.outBytes.Load(),
		OutDropped: e.outDropped.Load(),
		InPackets:  e.inPackets.Load(),
		InBytes:    e.inBytes.Load(),
		InDropped:  e.inDropped.Load(),
	}
}

func (e *endpoint) currentDispatcher() stack.NetworkDispatcher {
	e.dmu.RLock()
	defer e.dmu.RUnlock()
	return e.dispatcher
}

// Attach implements stack.NetworkLinkEndpoint.
func (e *endpoint) Attach(d stack.NetworkDispatcher) {
	e.dmu.Lock()
	e.dispatcher = d
	e.dmu.Unlock()
}

// IsAttached implements stack.NetworkLinkEndpoint.
func (e *endpoint) IsAttached() bool { return e.currentDispatcher() != nil }

// MTU implements stack.NetworkLinkEndpoint.
func (e *endpoint) MTU() uint32 { return e.mtu.Load() }

// SetMTU implements stack.NetworkLinkEndpoint.
func (e *endpoint) SetMTU(mtu uint32) { e.mtu.Store(mtu) }

// MaxHeaderLength implements stack.NetworkLinkEndpoint: there is no link
// header.
func (*endpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.NetworkLinkEndpoint: a TUN has none.
func (*endpoint) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.NetworkLinkEndpoint.
func (*endpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.NetworkLinkEndpoint.
func (*endpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload
}

// GSOMaxSize implements stack.GSOEndpoint.
func (*endpoint) GSOMaxSize() uint32 { return gsoMaxSize }

// SupportedGSO implements stack.GSOEndpoint.
func (*endpoint) SupportedGSO() stack.SupportedGSO { return stack.HostGSOSupported }

// Wait implements stack.NetworkLinkEndpoint: the endpoint owns no
// goroutines.
func (*endpoint) Wait() {}

// ARPHardwareType implements stack.NetworkLinkEndpoint.
func (*endpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.NetworkLinkEndpoint.
func (*endpoint) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.NetworkLinkEndpoint.
func (*endpoint) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close implements stack.NetworkLinkEndpoint; the stack calls it when the
// NIC goes away.
func (e *endpoint) Close() { e.close() }

// SetOnCloseAction implements stack.NetworkLinkEndpoint.
func (*endpoint) SetOnCloseAction(func()) {}
