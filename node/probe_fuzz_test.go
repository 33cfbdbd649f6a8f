package node

import (
	"crypto/ecdh"
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/clustral/clustral/proto"
)

// Fixed keys, so that seeds sealed under them stay valid in the committed
// corpus.
var (
	fuzzSelfPriv = proto.Key{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32}
	fuzzPeerPriv = proto.Key{32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1}
	fuzzPeerAddr = netip.MustParseAddrPort("198.51.100.2:2000")
	fuzzFrom     = netip.MustParseAddrPort("203.0.113.9:4000")
)

// fuzzProbeSetup is a Bind with one peer (fuzzPeerPriv's), on a fake
// network where fuzzFrom listens, and the probe key between the two.
func fuzzProbeSetup(t testing.TB) (*Bind, *fakeSock, proto.Key, probeKey) {
	var fnet fakeNet
	b := NewBind()
	if err := b.setKey(fuzzSelfPriv); err != nil {
		t.Fatal(err)
	}
	b.udp = fnet.sock("192.0.2.1:1000")
	fnet.sock(fuzzPeerAddr.String())
	from := fnet.sock(fuzzFrom.String())
	peerPub := proto.Key(wgtypes.Key(fuzzPeerPriv).PublicKey())
	if _, err := b.ParseEndpoint(FormatEndpoint(peerPub, []netip.AddrPort{fuzzPeerAddr})); err != nil {
		t.Fatal(err)
	}
	priv, err := ecdh.X25519().NewPrivateKey(fuzzPeerPriv[:])
	if err != nil {
		t.Fatal(err)
	}
	return b, from, peerPub, mustProbeKey(t, priv, b.self)
}

// FuzzHandleProbe feeds the Bind arbitrary datagrams as path probes, from
// a direct address or through the relay in the peer's name. It never
// panics, and only a probe carrying the peer's MAC is answered, teaches an
// address, or confirms a direct path.
func FuzzHandleProbe(f *testing.F) {
	b, _, peer, key := fuzzProbeSetup(f)
	ping := proto.Probe{Type: proto.ProbePing, TxID: [12]byte{7}, Key: peer}
	pong := proto.Probe{Type: proto.ProbePong, TxID: [12]byte{9}, Key: peer, Observed: netip.MustParseAddrPort("192.0.2.1:1000")}
	unsealed, _ := ping.AppendBinary(nil)
	stunPong, _ := (&proto.Probe{Type: proto.ProbePong, TxID: [12]byte{3}, Observed: fuzzFrom}).AppendBinary(nil)
	selfPing := key.seal(nil, proto.Probe{Type: proto.ProbePing, Key: b.self})
	for _, s := range [][]byte{key.seal(nil, ping), key.seal(nil, pong), unsealed, stunPong, selfPing, []byte(proto.ProbeMagic), {}} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, pkt []byte, relayed bool) {
		b, from, peer, key := fuzzProbeSetup(t)
		src := fuzzFrom
		if relayed {
			src = netip.AddrPort{}
		}
		b.handleProbe(pkt, src, peer)
		genuine := key.verify(pkt)
		select {
		case d := <-from.in:
			if !genuine {
				t.Fatalf("answered %x, which has no valid MAC, with %x", pkt, d.b)
			}
			if len(d.b) != len(pkt) {
				t.Fatalf("answer of %d bytes to a probe of %d", len(d.b), len(pkt))
			}
		default:
		}
		pp := b.peers.paths[peer]
		pp.mu.Lock()
		learned := len(pp.learned) > 0
		pp.mu.Unlock()
		if learned && !genuine {
			t.Fatalf("%x taught an address without a valid MAC", pkt)
		}
		if ps, _ := b.PathStatus(peer); ps.Addr.IsValid() && !genuine {
			t.Fatalf("%x confirmed a direct path without a valid MAC", pkt)
		}
	})
}
