package coordinator

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

// FuzzServeSTUN sends the coordinator's discovery service arbitrary
// datagrams. It answers only a well-formed ping, with one pong of the
// same length (never more bytes than it got) echoing the transaction and
// naming the sender's address, and it keeps serving whatever comes. Each
// datagram is followed by a marker ping, so "no answer" is seen without
// waiting: the marker's pong arrives first.
func FuzzServeSTUN(f *testing.F) {
	c, err := net.Dial("udp", serve(f, newBareServer(f), "udp"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { c.Close() })
	self := netip.MustParseAddrPort(c.LocalAddr().String())

	for _, p := range []proto.Probe{
		{Type: proto.ProbePing, TxID: [12]byte{1}},
		{Type: proto.ProbePong, TxID: [12]byte{2}},
		{Type: proto.ProbePing, TxID: [12]byte{3}, Key: proto.Key{1}, Observed: netip.MustParseAddrPort("192.0.2.1:1")},
	} {
		b, _ := p.AppendBinary(nil)
		f.Add(b)
	}
	f.Add([]byte("not a probe"))
	f.Add([]byte{})

	var marker uint64
	f.Fuzz(func(t *testing.T, pkt []byte) {
		marker++
		var txid [12]byte
		txid[0], txid[11] = 0xee, byte(marker)
		for i := range 8 {
			txid[1+i] = byte(marker >> (8 * i))
		}
		m, _ := (&proto.Probe{Type: proto.ProbePing, TxID: txid}).AppendBinary(nil)
		if _, err := c.Write(pkt); err != nil && len(pkt) > 0 {
			return // too large for a datagram
		}
		if _, err := c.Write(m); err != nil {
			t.Fatal(err)
		}
		want, isPing := proto.ParseProbe(pkt)
		isPing = isPing && want.Type == proto.ProbePing
		answered := false
		buf := make([]byte, 2048)
		for {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("no answer to the marker: %v", err)
			}
			p, ok := proto.ParseProbe(buf[:n])
			if !ok || p.Type != proto.ProbePong || p.Observed != self || !p.Key.IsZero() {
				t.Fatalf("answer %x is not a pong naming %v", buf[:n], self)
			}
			if p.TxID == txid {
				break
			}
			if !isPing || answered || p.TxID != want.TxID || n > len(pkt) {
				t.Fatalf("%x was answered with %x", pkt, buf[:n])
			}
			answered = true
		}
		if isPing && !answered {
			t.Fatalf("the ping %x was not answered", pkt)
		}
	})
}
