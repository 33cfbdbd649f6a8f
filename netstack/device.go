package netstack

import (
	"fmt"
	"os"
	"sync"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// batchSize is the number of packets device.Read returns at most per call,
// and what it tells wireguard-go to offer per Write: wireguard-go's own
// ideal batch.
const batchSize = conn.IdealBatchSize

// device is the tun.Device face of a Stack.
//
// Read may be called from one goroutine at a time (wireguard-go has one
// reader); concurrent calls are serialized. Write is safe for concurrent
// use: wireguard-go writes from one goroutine per peer.
type device struct {
	s   *Stack
	ep  *endpoint
	mtu int

	events     chan tun.Event
	eventsOnce sync.Once

	rmu sync.Mutex // serializes Read; guards the fields below
	// pending are packets taken from the endpoint and not yet fully copied
	// out; the reader holds their references. pending[0] may be a GSO
	// packet of which seg segments have already been returned.
	pending []*stack.PacketBuffer
	seg     int
	popBuf  [batchSize]*stack.PacketBuffer
}

var groPool = sync.Pool{New: func() any {
	g := new(gro.GRO)
	g.Init(true)
	return g
}}

// Read implements tun.Device. It blocks until at least one packet is
// available and then returns as many as fit in bufs, cutting GSO segments
// to the MTU on the way. It returns os.ErrClosed once the Stack is closed.
func (d *device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.rmu.Lock()
	defer d.rmu.Unlock()
	n := 0
	for {
		for n < len(bufs) && len(d.pending) > 0 {
			pkt := d.pending[0]
			k, done := d.emit(pkt, bufs[n:], sizes[n:], offset)
			n += k
			if !done {
				break
			}
			pkt.DecRef()
			d.pending[0] = nil
			d.pending = d.pending[1:]
			d.seg = 0
		}
		if n == len(bufs) || len(d.pending) > 0 {
			return n, nil
		}
		want := min(len(bufs)-n, len(d.popBuf))
		k, closed := d.ep.pop(d.popBuf[:want])
		if k > 0 {
			d.pending = d.popBuf[:k]
			continue
		}
		if n > 0 {
			return n, nil
		}
		if closed {
			return 0, os.ErrClosed
		}
		select {
		case <-d.ep.ready:
		case <-d.ep.done:
		}
	}
}

// emit copies pkt into bufs, one IP packet per buffer, starting at segment
// d.seg of pkt. It returns how many buffers it filled and whether pkt is
// finished (fully copied, or dropped as too large for the buffers).
func (d *device) emit(pkt *stack.PacketBuffer, bufs [][]byte, sizes []int, offset int) (int, bool) {
	gso := pkt.GSOOptions
	if gso.Type == stack.GSONone || !gso.NeedsCsum {
		dst := bufs[0][offset:]
		size := pkt.Size()
		if size > len(dst) {
			d.ep.outDropped.Add(1)
			return 0, true
		}
		copySlices(dst[:size], pkt.AsSlices(), 0)
		sizes[0] = size
		d.ep.outPackets.Add(1)
		d.ep.outBytes.Add(uint64(size))
		return 1, true
	}

	// A TCP segment with a partial checksum, possibly larger than the MSS.
	// There is no link header, so the IP and TCP headers are the first
	// HeaderSize bytes.
	hdrLen := pkt.HeaderSize()
	l3 := hdrLen - len(pkt.TransportHeader().Slice())
	payload := pkt.Size() - hdrLen
	mss := int(gso.MSS)
	if mss <= 0 || mss > payload {
		mss = max(payload, 1)
	}
	nseg := max((payload+mss-1)/mss, 1)
	slices := pkt.AsSlices()
	v4 := gso.Type == stack.GSOTCPv4

	n, bytes := 0, 0
	for ; d.seg < nseg && n < len(bufs); d.seg++ {
		off := d.seg * mss
		segLen := min(mss, payload-off)
		dst := bufs[n][offset:]
		if hdrLen+segLen > len(dst) {
			d.ep.outDropped.Add(1)
			return n, true
		}
		dst = dst[:hdrLen+segLen]
		copySlices(dst[:hdrLen], slices, 0)
		copySlices(dst[hdrLen:], slices, hdrLen+off)
		finishSegment(dst, l3, v4, d.seg, nseg, uint32(off))
		sizes[n] = len(dst)
		n++
		bytes += len(dst)
	}
	d.ep.outPackets.Add(uint64(n))
	d.ep.outBytes.Add(uint64(bytes))
	return n, d.seg == nseg
}

// finishSegment turns a copy of the headers of a GSO packet followed by
// one segment's payload into a valid IP packet: segment i of nseg, whose
// payload starts seqOff bytes into the GSO packet's. It fixes the IP
// length, ID and checksum, the TCP sequence number and flags, and computes
// the TCP checksum.
func finishSegment(p []byte, l3 int, v4 bool, i, nseg int, seqOff uint32) {
	tcp := header.TCP(p[l3:])
	if nseg > 1 {
		tcp.SetSequenceNumber(tcp.SequenceNumber() + seqOff)
		flags := tcp.Flags()
		if i != nseg-1 {
			flags &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		if i != 0 {
			flags &^= header.TCPFlagCwr
		}
		tcp.SetFlags(uint8(flags))
	}
	var xsum uint16
	if v4 {
		ip := header.IPv4(p)
		if nseg > 1 {
			ip.SetTotalLength(uint16(len(p)))
			ip.SetID(ip.ID() + uint16(i))
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
		}
		xsum = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(p)-l3))
	} else {
		ip := header.IPv6(p)
		if nseg > 1 {
			ip.SetPayloadLength(uint16(len(p) - header.IPv6MinimumSize))
		}
		xsum = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(p)-l3))
	}
	tcp.SetChecksum(0)
	tcp.SetChecksum(^checksum.Checksum(p[l3:], xsum))
}

// copySlices fills dst with the bytes of the concatenation of src starting
// at off.
func copySlices(dst []byte, src [][]byte, off int) {
	for _, s := range src {
		if len(dst) == 0 {
			return
		}
		if off >= len(s) {
			off -= len(s)
			continue
		}
		c := copy(dst, s[off:])
		dst = dst[c:]
		off = 0
	}
}

// Write implements tun.Device. It hands the IP packets in bufs to the
// stack, coalescing consecutive TCP segments of a flow first. Packets that
// are neither IPv4 nor IPv6 are dropped and counted.
func (d *device) Write(bufs [][]byte, offset int) (int, error) {
	disp := d.ep.currentDispatcher()
	if disp == nil {
		return 0, os.ErrClosed
	}
	g := groPool.Get().(*gro.GRO)
	g.Dispatcher = disp
	var bytes uint64
	var pkts uint64
	for _, b := range bufs {
		p := b[offset:]
		if len(p) == 0 {
			continue
		}
		var proto = header.IPv4ProtocolNumber
		switch p[0] >> 4 {
		case 4:
		case 6:
			proto = header.IPv6ProtocolNumber
		default:
			d.ep.inDropped.Add(1)
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
		pkt.NetworkProtocolNumber = proto
		pkt.RXChecksumValidated = true
		g.Enqueue(pkt)
		pkt.DecRef()
		pkts++
		bytes += uint64(len(p))
	}
	g.Flush()
	g.Dispatcher = nil
	groPool.Put(g)
	d.ep.inPackets.Add(pkts)
	d.ep.inBytes.Add(bytes)
	return len(bufs), nil
}

// BatchSize implements tun.Device.
func (d *device) BatchSize() int { return batchSize }

// MTU implements tun.Device.
func (d *device) MTU() (int, error) { return d.mtu, nil }

// Name implements tun.Device.
func (d *device) Name() (string, error) { return "netstack", nil }

// File implements tun.Device; there is no file.
func (d *device) File() *os.File { return nil }

// Events implements tun.Device. It yields tun.EventUp once and is closed
// when the Stack closes.
func (d *device) Events() <-chan tun.Event { return d.events }

// Close implements tun.Device by closing the Stack: wireguard-go's
// device.Close closes its TUN, and the stack is of no use without it.
func (d *device) Close() error { return d.s.Close() }

func (d *device) closeEvents() {
	d.eventsOnce.Do(func() { close(d.events) })
}

func (d *device) String() string { return fmt.Sprintf("netstack(mtu=%d)", d.mtu) }
