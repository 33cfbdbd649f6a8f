package netstack

import (
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// fakeTUN is the kernel side: Read hands out what out holds, Write
// records what reached the kernel.
type fakeTUN struct {
	mu      sync.Mutex
	out     [][]byte
	written [][]byte
}

func (t *fakeTUN) File() *os.File           { return nil }
func (t *fakeTUN) MTU() (int, error)        { return 1420, nil }
func (t *fakeTUN) Name() (string, error)    { return "fake", nil }
func (t *fakeTUN) Events() <-chan tun.Event { return nil }
func (t *fakeTUN) Close() error             { return nil }
func (t *fakeTUN) BatchSize() int           { return 1 }

func (t *fakeTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for n < len(bufs) && len(t.out) > 0 {
		sizes[n] = copy(bufs[n][offset:], t.out[0])
		t.out = t.out[1:]
		n++
	}
	return n, nil
}

func (t *fakeTUN) Write(bufs [][]byte, offset int) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range bufs {
		t.written = append(t.written, append([]byte(nil), b[offset:]...))
	}
	return len(bufs), nil
}

const testOffset = 16

// send passes p from the kernel toward the mesh through f.
func send(t *testing.T, f *ReplyFilter, k *fakeTUN, p []byte) {
	t.Helper()
	k.mu.Lock()
	k.out = append(k.out, p)
	k.mu.Unlock()
	bufs := [][]byte{make([]byte, testOffset+len(p))}
	sizes := make([]int, 1)
	if n, err := f.Read(bufs, sizes, testOffset); n != 1 || err != nil {
		t.Fatalf("Read = %d, %v", n, err)
	}
}

// deliver passes p from the mesh toward the kernel and reports whether
// it got there.
func deliver(t *testing.T, f *ReplyFilter, k *fakeTUN, p []byte) bool {
	t.Helper()
	k.mu.Lock()
	before := len(k.written)
	k.mu.Unlock()
	b := append(make([]byte, testOffset), p...)
	if n, err := f.Write([][]byte{b}, testOffset); n != 1 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.written) > before
}

func taddr(a netip.Addr) tcpip.Address { return tcpip.AddrFromSlice(a.AsSlice()) }

// ipPacket wraps transport in an IP header from src to dst.
func ipPacket(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, transport []byte) []byte {
	if src.Is4() {
		p := make([]byte, header.IPv4MinimumSize+len(transport))
		header.IPv4(p).Encode(&header.IPv4Fields{TotalLength: uint16(len(p)), TTL: 64, Protocol: uint8(proto), SrcAddr: taddr(src), DstAddr: taddr(dst)})
		copy(p[header.IPv4MinimumSize:], transport)
		return p
	}
	p := make([]byte, header.IPv6MinimumSize+len(transport))
	header.IPv6(p).Encode(&header.IPv6Fields{PayloadLength: uint16(len(transport)), TransportProtocol: proto, HopLimit: 64, SrcAddr: taddr(src), DstAddr: taddr(dst)})
	copy(p[header.IPv6MinimumSize:], transport)
	return p
}

func tcpPacket(src, dst netip.AddrPort, flags header.TCPFlags) []byte {
	tcp := make([]byte, header.TCPMinimumSize)
	header.TCP(tcp).Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 1000})
	return ipPacket(src.Addr(), dst.Addr(), header.TCPProtocolNumber, tcp)
}

func udpPacket(src, dst netip.AddrPort) []byte {
	udp := make([]byte, header.UDPMinimumSize+4)
	header.UDP(udp).Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(udp))})
	return ipPacket(src.Addr(), dst.Addr(), header.UDPProtocolNumber, udp)
}

func echoPacket(src, dst netip.Addr, reply bool, id uint16) []byte {
	if src.Is4() {
		m := header.ICMPv4(make([]byte, header.ICMPv4MinimumSize))
		m.SetType(header.ICMPv4Echo)
		if reply {
			m.SetType(header.ICMPv4EchoReply)
		}
		m.SetIdent(id)
		return ipPacket(src, dst, header.ICMPv4ProtocolNumber, m)
	}
	m := header.ICMPv6(make([]byte, header.ICMPv6MinimumSize))
	m.SetType(header.ICMPv6EchoRequest)
	if reply {
		m.SetType(header.ICMPv6EchoReply)
	}
	m.SetIdent(id)
	return ipPacket(src, dst, header.ICMPv6ProtocolNumber, m)
}

// errorPacket is an ICMP error from src to dst quoting (the start of) quoted.
func errorPacket(src, dst netip.Addr, quoted []byte) []byte {
	if len(quoted) > 48+8 {
		quoted = quoted[:48+8]
	}
	if src.Is4() {
		m := header.ICMPv4(make([]byte, header.ICMPv4MinimumSize+len(quoted)))
		m.SetType(header.ICMPv4DstUnreachable)
		copy(m[header.ICMPv4MinimumSize:], quoted)
		return ipPacket(src, dst, header.ICMPv4ProtocolNumber, m)
	}
	m := header.ICMPv6(make([]byte, header.ICMPv6MinimumSize+len(quoted)))
	m.SetType(header.ICMPv6PacketTooBig)
	copy(m[header.ICMPv6MinimumSize:], quoted)
	return ipPacket(src, dst, header.ICMPv6ProtocolNumber, m)
}

func TestReplyFilterAdmitsOnlyReplies(t *testing.T) {
	for _, fam := range []struct {
		name            string
		me, agent, evil netip.Addr
	}{
		{"IPv4", netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("100.64.0.3")},
		{"IPv6", netip.MustParseAddr("fd7a::1"), netip.MustParseAddr("fd7a::2"), netip.MustParseAddr("fd7a::3")},
	} {
		t.Run(fam.name, func(t *testing.T) {
			me, agent, evil := fam.me, fam.agent, fam.evil
			ap := func(a netip.Addr, p uint16) netip.AddrPort { return netip.AddrPortFrom(a, p) }
			k := &fakeTUN{}
			f := NewReplyFilter(k)
			now := time.Unix(1_000_000, 0)
			f.now = func() time.Time { return now }

			// Before anything is sent, nothing comes in.
			unsolicited := []struct {
				name string
				p    []byte
			}{
				{"TCP SYN to ssh", tcpPacket(ap(agent, 40000), ap(me, 22), header.TCPFlagSyn)},
				{"TCP SYN-ACK nobody asked for", tcpPacket(ap(agent, 443), ap(me, 50000), header.TCPFlagSyn|header.TCPFlagAck)},
				{"UDP to DNS", udpPacket(ap(agent, 5353), ap(me, 53))},
				{"echo request", echoPacket(agent, me, false, 1)},
				{"echo reply nobody asked for", echoPacket(agent, me, true, 1)},
				{"error quoting nothing we sent", errorPacket(agent, me, tcpPacket(ap(me, 50000), ap(agent, 443), header.TCPFlagSyn))},
			}
			for _, u := range unsolicited {
				if deliver(t, f, k, u.p) {
					t.Errorf("unsolicited %s was delivered", u.name)
				}
			}

			// This machine opens a TCP connection, a UDP flow and a ping.
			syn := tcpPacket(ap(me, 50000), ap(agent, 443), header.TCPFlagSyn)
			send(t, f, k, syn)
			send(t, f, k, udpPacket(ap(me, 41000), ap(agent, 53)))
			send(t, f, k, echoPacket(me, agent, false, 7))

			tests := []struct {
				name string
				p    []byte
				want bool
			}{
				{"SYN-ACK of our connection", tcpPacket(ap(agent, 443), ap(me, 50000), header.TCPFlagSyn|header.TCPFlagAck), true},
				{"RST of our connection", tcpPacket(ap(agent, 443), ap(me, 50000), header.TCPFlagRst), true},
				{"UDP reply", udpPacket(ap(agent, 53), ap(me, 41000)), true},
				{"echo reply", echoPacket(agent, me, true, 7), true},
				{"error quoting our SYN", errorPacket(agent, me, syn), true},
				{"same ports, other peer", tcpPacket(ap(evil, 443), ap(me, 50000), header.TCPFlagAck), false},
				{"same peer, other local port", tcpPacket(ap(agent, 443), ap(me, 50001), header.TCPFlagAck), false},
				{"same peer, other remote port", tcpPacket(ap(agent, 444), ap(me, 50000), header.TCPFlagAck), false},
				{"TCP from the UDP flow's ports", tcpPacket(ap(agent, 53), ap(me, 41000), header.TCPFlagSyn), false},
				{"SYN to ssh still", tcpPacket(ap(agent, 40000), ap(me, 22), header.TCPFlagSyn), false},
				{"echo reply of another ping", echoPacket(agent, me, true, 8), false},
				{"echo request still", echoPacket(agent, me, false, 7), false},
				{"error from another peer quoting a flow to it", errorPacket(evil, me, tcpPacket(ap(me, 50000), ap(evil, 443), header.TCPFlagSyn)), false},
				{"truncated", syn[:10], false},
				{"empty", nil, false},
			}
			for _, tt := range tests {
				if got := deliver(t, f, k, tt.p); got != tt.want {
					t.Errorf("%s: delivered = %v, want %v", tt.name, got, tt.want)
				}
			}

			// Silence past the idle time closes the flows.
			now = now.Add(tcpFlowIdle + time.Second)
			if deliver(t, f, k, tcpPacket(ap(agent, 443), ap(me, 50000), header.TCPFlagAck)) {
				t.Error("a reply after the flow expired was delivered")
			}
			if f.Dropped() == 0 {
				t.Error("Dropped does not count")
			}
		})
	}
}

func TestReplyFilterDropsFragmentsAndExtensionHeaders(t *testing.T) {
	me, agent := netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("100.64.0.2")
	k := &fakeTUN{}
	f := NewReplyFilter(k)
	send(t, f, k, udpPacket(netip.AddrPortFrom(me, 41000), netip.AddrPortFrom(agent, 53)))
	reply := udpPacket(netip.AddrPortFrom(agent, 53), netip.AddrPortFrom(me, 41000))
	if !deliver(t, f, k, reply) {
		t.Fatal("reply not delivered")
	}
	frag := append([]byte(nil), reply...)
	header.IPv4(frag).SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
	header.IPv4(frag).SetChecksum(0)
	if deliver(t, f, k, frag) {
		t.Error("a first fragment was delivered")
	}
	later := append([]byte(nil), reply...)
	header.IPv4(later).SetFlagsFragmentOffset(0, 8)
	if deliver(t, f, k, later) {
		t.Error("a later fragment was delivered")
	}

	me6, agent6 := netip.MustParseAddr("fd7a::1"), netip.MustParseAddr("fd7a::2")
	send(t, f, k, udpPacket(netip.AddrPortFrom(me6, 41000), netip.AddrPortFrom(agent6, 53)))
	// A hop-by-hop header in front of the UDP reply.
	udp := udpPacket(netip.AddrPortFrom(agent6, 53), netip.AddrPortFrom(me6, 41000))[header.IPv6MinimumSize:]
	ext := append([]byte{uint8(header.UDPProtocolNumber), 0, 1, 4, 0, 0, 0, 0}, udp...)
	p := ipPacket(agent6, me6, 0, ext) // next header 0: hop-by-hop
	if deliver(t, f, k, p) {
		t.Error("a packet with an IPv6 extension header was delivered")
	}
}

func TestReplyFilterBoundsItsTable(t *testing.T) {
	me, agent := netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("100.64.0.2")
	k := &fakeTUN{}
	f := NewReplyFilter(k)
	for i := range maxFlows + 10 {
		p := uint16(i)
		f.flows[flowKey{uint8(header.UDPProtocolNumber), me, agent, p, uint16(i >> 16)}] = time.Now().Add(time.Hour)
	}
	if len(f.flows) <= maxFlows {
		t.Fatal("setup")
	}
	send(t, f, k, udpPacket(netip.AddrPortFrom(me, 1), netip.AddrPortFrom(agent, 9999)))
	if _, ok := f.flows[flowKey{uint8(header.UDPProtocolNumber), me, agent, 1, 9999}]; ok {
		t.Error("a full table took a new flow")
	}
}

// FuzzReplyFilter feeds arbitrary packets both ways: parsing never panics,
// and nothing from the mesh is delivered before anything was sent.
func FuzzReplyFilter(f *testing.F) {
	me, agent := netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("100.64.0.2")
	me6, agent6 := netip.MustParseAddr("fd7a::1"), netip.MustParseAddr("fd7a::2")
	for _, p := range [][]byte{
		tcpPacket(netip.AddrPortFrom(me, 50000), netip.AddrPortFrom(agent, 443), header.TCPFlagSyn),
		udpPacket(netip.AddrPortFrom(agent6, 53), netip.AddrPortFrom(me6, 41000)),
		echoPacket(agent, me, true, 7),
		echoPacket(me6, agent6, false, 7),
		errorPacket(agent, me, tcpPacket(netip.AddrPortFrom(me, 50000), netip.AddrPortFrom(agent, 443), header.TCPFlagSyn)),
		errorPacket(agent6, me6, echoPacket(me6, agent6, false, 9)),
		{0x45},
		{0x60, 0, 0, 0},
	} {
		f.Add(p, p)
	}
	f.Fuzz(func(t *testing.T, out, in []byte) {
		k := &fakeTUN{}
		fl := NewReplyFilter(k)
		if deliver(t, fl, k, in) {
			t.Fatalf("delivered %x with an empty flow table", in)
		}
		send(t, fl, k, out)
		deliver(t, fl, k, in)
		// A packet is delivered only for a flow that was sent.
		if key, _, ok := inboundFlow(in); ok && len(k.written) > 0 {
			if _, known := fl.flows[key]; !known {
				t.Fatalf("delivered %x for an untracked flow %+v", in, key)
			}
		}
	})
}
