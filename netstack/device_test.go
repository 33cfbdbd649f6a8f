package netstack

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// wire moves packets from src's TUN to dst's TUN, as wireguard-go would,
// after checking that each one is a well-formed IP packet no larger than
// the MTU with correct IP and TCP checksums. The first bad packet is
// reported on the returned channel.
func wire(src, dst *Stack, mtu int) <-chan error {
	bad := make(chan error, 1)
	go func() {
		bufs := make([][]byte, batchSize)
		for i := range bufs {
			bufs[i] = make([]byte, 65535)
		}
		sizes := make([]int, batchSize)
		for {
			n, err := src.TUN().Read(bufs, sizes, 0)
			if err != nil {
				return
			}
			out := make([][]byte, n)
			for i := range n {
				p := bufs[i][:sizes[i]]
				if err := checkPacket(p, mtu); err != nil {
					select {
					case bad <- err:
					default:
					}
				}
				out[i] = p
			}
			dst.TUN().Write(out, 0)
		}
	}()
	return bad
}

func checkPacket(p []byte, mtu int) error {
	if len(p) > mtu {
		return fmt.Errorf("packet of %d bytes exceeds MTU %d", len(p), mtu)
	}
	var l3 int
	var proto uint8
	var xsum uint16
	switch p[0] >> 4 {
	case 4:
		ip := header.IPv4(p)
		if !ip.IsValid(len(p)) || int(ip.TotalLength()) != len(p) {
			return fmt.Errorf("bad IPv4 header or length")
		}
		if ip.CalculateChecksum() != 0xffff {
			return fmt.Errorf("bad IPv4 header checksum")
		}
		l3 = int(ip.HeaderLength())
		proto = ip.Protocol()
		xsum = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(p)-l3))
	case 6:
		ip := header.IPv6(p)
		if !ip.IsValid(len(p)) || int(ip.PayloadLength())+header.IPv6MinimumSize != len(p) {
			return fmt.Errorf("bad IPv6 header or length")
		}
		l3 = header.IPv6MinimumSize
		proto = ip.NextHeader()
		xsum = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(p)-l3))
	default:
		return fmt.Errorf("IP version %d", p[0]>>4)
	}
	if proto != uint8(header.TCPProtocolNumber) {
		return nil
	}
	if got := checksum.Checksum(p[l3:], xsum); got != 0xffff {
		return fmt.Errorf("bad TCP checksum (sum %#x) in %d-byte packet", got, len(p))
	}
	return nil
}

// TestSegmentation sends bulk data between two stacks joined directly
// (no WireGuard) and checks every packet on the wire: GSO super-segments
// must leave as MTU-sized packets with correct checksums, since receivers
// such as a kernel TUN do verify them.
func TestSegmentation(t *testing.T) {
	tests := []struct {
		name string
		a, b netip.Addr
		mtu  int
	}{
		{"ipv4", netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), 1420},
		{"ipv6", netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), 1420},
		{"ipv4 min MTU", netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), 1280},
		{"ipv6 jumbo MTU", netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), 9000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sa, err := New(Config{Addrs: []netip.Addr{tt.a}, MTU: tt.mtu})
			if err != nil {
				t.Fatal(err)
			}
			defer sa.Close()
			sb, err := New(Config{Addrs: []netip.Addr{tt.b}, MTU: tt.mtu})
			if err != nil {
				t.Fatal(err)
			}
			defer sb.Close()
			badAB := wire(sa, sb, tt.mtu)
			badBA := wire(sb, sa, tt.mtu)

			l, err := sb.ListenTCP(netip.AddrPortFrom(tt.b, 80))
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			got := make(chan []byte, 1)
			go func() {
				c, err := l.Accept()
				if err != nil {
					got <- nil
					return
				}
				defer c.Close()
				b, _ := io.ReadAll(c)
				got <- b
			}()

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := sa.DialTCPAddrPort(ctx, netip.AddrPortFrom(tt.b, 80))
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, 4<<20)
			rand.Read(want)
			if _, err := c.Write(want); err != nil {
				t.Fatal(err)
			}
			c.(interface{ CloseWrite() error }).CloseWrite()
			defer c.Close()

			select {
			case b := <-got:
				if !bytes.Equal(b, want) {
					t.Fatalf("received %d bytes that differ from the %d sent", len(b), len(want))
				}
			case err := <-badAB:
				t.Fatal(err)
			case err := <-badBA:
				t.Fatal(err)
			case <-ctx.Done():
				t.Fatal("transfer timed out")
			}
			select {
			case err := <-badAB:
				t.Fatal(err)
			default:
			}
			if s := sa.Stats(); s.OutPackets == 0 || s.OutBytes < uint64(len(want)) {
				t.Fatalf("stats %+v do not account for the transfer", s)
			}
		})
	}
}

func TestCopySlices(t *testing.T) {
	src := [][]byte{[]byte("ab"), nil, []byte("cde"), []byte("f")}
	for off := range 6 {
		for n := 0; off+n <= 6; n++ {
			dst := make([]byte, n)
			copySlices(dst, src, off)
			if want := "abcdef"[off : off+n]; string(dst) != want {
				t.Errorf("copySlices(off=%d, n=%d) = %q, want %q", off, n, dst, want)
			}
		}
	}
}
