package node

import (
	"crypto/ecdh"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// genPriv returns a fresh WireGuard key pair as an X25519 private key and
// its public key.
func genPriv(t testing.TB) (*ecdh.PrivateKey, proto.Key) {
	t.Helper()
	k := testkit.WireGuardKey(t)
	priv, err := ecdh.X25519().NewPrivateKey(k[:])
	if err != nil {
		t.Fatal(err)
	}
	return priv, proto.Key(k.PublicKey())
}

func mustProbeKey(t testing.TB, priv *ecdh.PrivateKey, peer proto.Key) probeKey {
	t.Helper()
	k, err := newProbeKey(priv, peer)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestProbeKeyIsShared(t *testing.T) {
	privA, pubA := genPriv(t)
	privB, pubB := genPriv(t)
	privC, _ := genPriv(t)
	ab, ba := mustProbeKey(t, privA, pubB), mustProbeKey(t, privB, pubA)
	if ab != ba {
		t.Fatal("the two ends of a pair derive different probe keys")
	}
	if cb := mustProbeKey(t, privC, pubB); cb == ab {
		t.Fatal("a third key derives the pair's probe key")
	}
	if _, err := newProbeKey(privA, proto.Key{}); err == nil {
		t.Fatal("a zero (low-order) public key gave a probe key")
	}
}

func TestProbeSealVerify(t *testing.T) {
	privA, _ := genPriv(t)
	_, pubB := genPriv(t)
	k := mustProbeKey(t, privA, pubB)
	pkt := k.seal(nil, proto.Probe{Type: proto.ProbePong, TxID: [12]byte{1}, Key: pubB, Observed: netip.MustParseAddrPort("192.0.2.7:4242")})
	if len(pkt) != proto.ProbeLen {
		t.Fatalf("sealed probe is %d bytes, want %d", len(pkt), proto.ProbeLen)
	}
	if _, ok := proto.ParseProbe(pkt); !ok {
		t.Fatal("a sealed probe does not parse")
	}
	if !k.verify(pkt) {
		t.Fatal("a sealed probe does not verify")
	}
	for i := range pkt {
		bad := append([]byte(nil), pkt...)
		bad[i] ^= 0x40
		if k.verify(bad) {
			t.Fatalf("a probe with byte %d changed still verifies", i)
		}
	}
	if k.verify(pkt[:len(pkt)-1]) {
		t.Fatal("a short probe verifies")
	}
}

// TestForgedProbesIgnored: only a peer can make a node answer a ping, learn
// an address, or confirm a direct path. Anybody else who knows the peer's
// public key (it is no secret) and sends probes in its name is ignored.
func TestForgedProbesIgnored(t *testing.T) {
	var fnet fakeNet
	a := NewBind()
	keyBind(t, a)
	a.udp = fnet.sock("192.0.2.1:1000")
	privB, pubB := genPriv(t)
	privM, _ := genPriv(t) // the attacker's own key
	peerAddr := netip.MustParseAddrPort("198.51.100.2:2000")
	peer := fnet.sock(peerAddr.String())
	mallory := fnet.sock("203.0.113.9:4000")
	if _, err := a.ParseEndpoint(FormatEndpoint(pubB, []netip.AddrPort{peerAddr})); err != nil {
		t.Fatal(err)
	}
	genuine := mustProbeKey(t, privB, a.self)
	forged := mustProbeKey(t, privM, a.self)
	answered := func(s *fakeSock) (proto.Probe, bool) {
		select {
		case d := <-s.in:
			p, ok := proto.ParseProbe(d.b)
			if !ok || !genuine.verify(d.b) {
				t.Fatalf("answer %x is not a probe sealed for the peer", d.b)
			}
			return p, true
		default:
			return proto.Probe{}, false
		}
	}
	learned := func(ap netip.AddrPort) bool {
		pp := a.peers.paths[pubB]
		pp.mu.Lock()
		defer pp.mu.Unlock()
		return slices.Contains(pp.learned, ap)
	}

	ping := proto.Probe{Type: proto.ProbePing, TxID: [12]byte{7}, Key: pubB}
	unsealed, _ := ping.AppendBinary(nil)
	tests := []struct {
		name string
		pkt  []byte
	}{
		{"no MAC", unsealed},
		{"MAC under another key", forged.seal(nil, ping)},
	}
	for _, tt := range tests {
		t.Run("ping/"+tt.name, func(t *testing.T) {
			a.handleProbe(tt.pkt, mallory.addr, proto.Key{})
			if _, ok := answered(mallory); ok {
				t.Error("a forged ping was answered")
			}
			if learned(mallory.addr) {
				t.Error("a forged ping taught its address")
			}
		})
	}
	t.Run("ping/genuine", func(t *testing.T) {
		a.handleProbe(genuine.seal(nil, ping), mallory.addr, proto.Key{})
		if p, ok := answered(mallory); !ok || p.Type != proto.ProbePong || p.TxID != ping.TxID {
			t.Fatalf("the peer's ping got %+v, %v; want a pong", p, ok)
		}
		if !learned(mallory.addr) {
			t.Error("the peer's ping did not teach its address")
		}
	})

	// Pongs: a's ping to the peer's address is answered by a forger first.
	a.probe(time.Now())
	var sent proto.Probe
	for {
		d := <-peer.in
		p, ok := proto.ParseProbe(d.b)
		if ok && p.Type == proto.ProbePing {
			sent = p
			break
		}
	}
	pong := proto.Probe{Type: proto.ProbePong, TxID: sent.TxID, Key: pubB, Observed: a.udp.(*fakeSock).addr}
	for _, tt := range []struct {
		name string
		pkt  []byte
	}{
		{"no MAC", func() []byte { b, _ := pong.AppendBinary(nil); return b }()},
		{"MAC under another key", forged.seal(nil, pong)},
	} {
		t.Run("pong/"+tt.name, func(t *testing.T) {
			a.handleProbe(tt.pkt, peerAddr, proto.Key{})
			if ps, _ := a.PathStatus(pubB); ps.Addr.IsValid() {
				t.Errorf("a forged pong confirmed a direct path to %v", ps.Addr)
			}
		})
	}
	t.Run("pong/genuine", func(t *testing.T) {
		a.handleProbe(genuine.seal(nil, pong), peerAddr, proto.Key{})
		if ps, _ := a.PathStatus(pubB); ps.Addr != peerAddr {
			t.Errorf("the peer's pong left the direct path at %v, want %v", ps.Addr, peerAddr)
		}
	})
}
