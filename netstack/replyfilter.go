package netstack

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Idle lifetimes of a tracked flow, from its last packet either way.
const (
	tcpFlowIdle   = time.Hour
	otherFlowIdle = 5 * time.Minute
	// maxFlows bounds the table. A new outbound flow past it is not
	// tracked (its replies are dropped) until idle flows expire.
	maxFlows = 1 << 16
	// sweepEvery is how often Read drops expired flows.
	sweepEvery = 30 * time.Second
)

// ReplyFilter is a tun.Device in front of a kernel TUN device that lets
// the mesh answer but never call: a packet from the mesh (Write, toward
// the kernel) is delivered only if it belongs to a flow a packet to the
// mesh (Read, from the kernel) opened — a TCP or UDP 5-tuple, an ICMP echo
// identifier, or an ICMP error quoting such a packet. Everything else from
// the mesh is dropped: fragments, IPv6 extension headers, and any
// connection an agent (or anything holding a mesh key) starts toward this
// machine. What this machine sends is never filtered.
//
// Flows expire after tcpFlowIdle (TCP) or otherFlowIdle of silence.
// Read is called by one goroutine, Write by several; the table is locked.
// Close closes the inner device.
type ReplyFilter struct {
	tun.Device
	now func() time.Time

	mu        sync.Mutex
	flows     map[flowKey]time.Time // expiry
	lastSweep time.Time

	dropped atomic.Uint64
}

// flowKey is a flow as this machine sees it. For ICMP echo both ports
// are the identifier.
type flowKey struct {
	proto         uint8
	local, remote netip.Addr
	lport, rport  uint16
}

// NewReplyFilter wraps dev. The filter owns dev from then on.
func NewReplyFilter(dev tun.Device) *ReplyFilter {
	return &ReplyFilter{Device: dev, now: time.Now, flows: make(map[flowKey]time.Time)}
}

// Dropped returns how many packets from the mesh were dropped.
func (f *ReplyFilter) Dropped() uint64 { return f.dropped.Load() }

// Read reads packets bound for the mesh from the kernel and tracks their
// flows.
func (f *ReplyFilter) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := f.Device.Read(bufs, sizes, offset)
	if n > 0 {
		now := f.now()
		f.mu.Lock()
		if now.Sub(f.lastSweep) > sweepEvery {
			for k, exp := range f.flows {
				if !now.Before(exp) {
					delete(f.flows, k)
				}
			}
			f.lastSweep = now
		}
		for i := range n {
			if k, idle, ok := outboundFlow(bufs[i][offset : offset+sizes[i]]); ok {
				if _, known := f.flows[k]; known || len(f.flows) < maxFlows {
					f.flows[k] = now.Add(idle)
				}
			}
		}
		f.mu.Unlock()
	}
	return n, err
}

// Write delivers to the kernel the packets from the mesh that answer a
// tracked flow and drops the others. It reports every packet as written:
// a dropped packet is not an error of the device.
func (f *ReplyFilter) Write(bufs [][]byte, offset int) (int, error) {
	now := f.now()
	keep := bufs[:0:0]
	f.mu.Lock()
	for _, b := range bufs {
		k, idle, ok := inboundFlow(b[offset:])
		if ok {
			exp, known := f.flows[k]
			ok = known && now.Before(exp)
			if ok && idle > 0 {
				f.flows[k] = now.Add(idle)
			}
		}
		if ok {
			keep = append(keep, b)
		} else {
			f.dropped.Add(1)
		}
	}
	f.mu.Unlock()
	if len(keep) == 0 {
		return len(bufs), nil
	}
	if _, err := f.Device.Write(keep, offset); err != nil {
		return 0, err
	}
	return len(bufs), nil
}

// packet is what the filter reads from an IP packet.
type packet struct {
	proto        uint8
	src, dst     netip.Addr
	sport, dport uint16
	// icmp: 0 for TCP and UDP; echoRequest, echoReply or icmpError.
	icmp int
	// quoted is the packet an ICMP error quotes.
	quoted *packet
}

const (
	echoRequest = iota + 1
	echoReply
	icmpError
	icmpOther
)

// outboundFlow returns the flow a packet from this machine opens or
// continues: TCP, UDP or an ICMP echo request.
func outboundFlow(p []byte) (flowKey, time.Duration, bool) {
	pk, ok := parsePacket(p, false)
	if !ok || (pk.icmp != 0 && pk.icmp != echoRequest) {
		return flowKey{}, 0, false
	}
	return flowKey{pk.proto, pk.src, pk.dst, pk.sport, pk.dport}, idleOf(pk.proto), true
}

// inboundFlow returns the flow a packet from the mesh must belong to, and
// how long it extends the flow's life (0: not at all, for ICMP errors).
func inboundFlow(p []byte) (flowKey, time.Duration, bool) {
	pk, ok := parsePacket(p, false)
	if !ok {
		return flowKey{}, 0, false
	}
	switch pk.icmp {
	case 0, echoReply:
		return flowKey{pk.proto, pk.dst, pk.src, pk.dport, pk.sport}, idleOf(pk.proto), true
	case icmpError:
		q := pk.quoted // a packet this machine sent
		if q.icmp != 0 && q.icmp != echoRequest {
			return flowKey{}, 0, false
		}
		return flowKey{q.proto, q.src, q.dst, q.sport, q.dport}, 0, true
	}
	return flowKey{}, 0, false
}

func idleOf(proto uint8) time.Duration {
	if proto == uint8(header.TCPProtocolNumber) {
		return tcpFlowIdle
	}
	return otherFlowIdle
}

// parsePacket reads p's addresses, protocol and ports (or echo
// identifier). quoted parses the truncated copy inside an ICMP error:
// lengths are not checked against the header and only the first 8 bytes
// of the transport header need be there.
func parsePacket(p []byte, quoted bool) (packet, bool) {
	if len(p) == 0 {
		return packet{}, false
	}
	var pk packet
	var payload []byte
	switch header.IPVersion(p) {
	case header.IPv4Version:
		ip := header.IPv4(p)
		if len(p) < header.IPv4MinimumSize {
			return packet{}, false
		}
		hl := int(ip.HeaderLength())
		if quoted {
			if hl < header.IPv4MinimumSize || hl > len(p) {
				return packet{}, false
			}
			payload = p[hl:]
		} else {
			if !ip.IsValid(len(p)) || ip.More() || ip.FragmentOffset() != 0 {
				return packet{}, false
			}
			payload = p[hl:ip.TotalLength()]
		}
		pk.proto = ip.Protocol()
		pk.src, pk.dst = addr(ip.SourceAddress()), addr(ip.DestinationAddress())
	case header.IPv6Version:
		ip := header.IPv6(p)
		if len(p) < header.IPv6MinimumSize {
			return packet{}, false
		}
		if quoted {
			payload = p[header.IPv6MinimumSize:]
		} else {
			if !ip.IsValid(len(p)) {
				return packet{}, false
			}
			payload = p[header.IPv6MinimumSize : header.IPv6MinimumSize+int(ip.PayloadLength())]
		}
		// Extension headers (fragments among them) are not followed:
		// NextHeader must be the transport.
		pk.proto = ip.NextHeader()
		pk.src, pk.dst = addr(ip.SourceAddress()), addr(ip.DestinationAddress())
	default:
		return packet{}, false
	}
	switch tcpip.TransportProtocolNumber(pk.proto) {
	case header.TCPProtocolNumber, header.UDPProtocolNumber:
		if len(payload) < 4 {
			return packet{}, false
		}
		pk.sport, pk.dport = binary.BigEndian.Uint16(payload), binary.BigEndian.Uint16(payload[2:])
		return pk, true
	case header.ICMPv4ProtocolNumber:
		if pk.src.Is6() || len(payload) < header.ICMPv4MinimumSize {
			return packet{}, false
		}
		m := header.ICMPv4(payload)
		switch m.Type() {
		case header.ICMPv4Echo:
			pk.icmp = echoRequest
		case header.ICMPv4EchoReply:
			pk.icmp = echoReply
		case header.ICMPv4DstUnreachable, header.ICMPv4TimeExceeded, header.ICMPv4ParamProblem:
			return withQuote(pk, payload[header.ICMPv4MinimumSize:], quoted)
		default:
			pk.icmp = icmpOther
			return pk, true
		}
		pk.sport, pk.dport = m.Ident(), m.Ident()
		return pk, true
	case header.ICMPv6ProtocolNumber:
		if pk.src.Is4() || len(payload) < header.ICMPv6MinimumSize {
			return packet{}, false
		}
		m := header.ICMPv6(payload)
		switch m.Type() {
		case header.ICMPv6EchoRequest:
			pk.icmp = echoRequest
		case header.ICMPv6EchoReply:
			pk.icmp = echoReply
		case header.ICMPv6DstUnreachable, header.ICMPv6PacketTooBig, header.ICMPv6TimeExceeded, header.ICMPv6ParamProblem:
			return withQuote(pk, payload[header.ICMPv6MinimumSize:], quoted)
		default:
			pk.icmp = icmpOther
			return pk, true
		}
		pk.sport, pk.dport = m.Ident(), m.Ident()
		return pk, true
	}
	return packet{}, false
}

// withQuote completes an ICMP error pk with the packet it quotes. An error
// inside a quote is not followed further.
func withQuote(pk packet, quote []byte, quoted bool) (packet, bool) {
	if quoted {
		pk.icmp = icmpOther
		return pk, true
	}
	q, ok := parsePacket(quote, true)
	if !ok || q.src.Is4() != pk.src.Is4() {
		return packet{}, false
	}
	pk.icmp, pk.quoted = icmpError, &q
	return pk, true
}

func addr(a tcpip.Address) netip.Addr {
	if a.Len() == 4 {
		return netip.AddrFrom4(a.As4())
	}
	return netip.AddrFrom16(a.As16())
}
