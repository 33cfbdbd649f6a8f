package node

import (
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/sha256"

	"github.com/clustral/clustral/proto"
)

// probeKey is the key that authenticates probes between two peers. Each end
// derives it from its own WireGuard private key and the other's public key
// (X25519, then HMAC-SHA256 with a label), so both compute the same key and
// nobody without one of the two private keys can.
type probeKey [32]byte

// probeKeyLabel separates probe keys from any other use of the shared
// secret.
const probeKeyLabel = "clustral probe v1"

// newProbeKey derives the probe key between the holder of priv and the
// peer with public key peer. It fails for a public key that is not a valid
// X25519 point, or whose shared secret is zero (a low-order point).
func newProbeKey(priv *ecdh.PrivateKey, peer proto.Key) (probeKey, error) {
	pub, err := ecdh.X25519().NewPublicKey(peer[:])
	if err != nil {
		return probeKey{}, err
	}
	shared, err := priv.ECDH(pub)
	if err != nil {
		return probeKey{}, err
	}
	m := hmac.New(sha256.New, shared)
	m.Write([]byte(probeKeyLabel))
	return probeKey(m.Sum(nil)), nil
}

// seal appends p's wire form to b with its MAC under k.
func (k *probeKey) seal(b []byte, p proto.Probe) []byte {
	p.MAC = [proto.ProbeMACLen]byte{}
	start := len(b)
	b, _ = p.AppendBinary(b)
	body := b[start : len(b)-proto.ProbeMACLen]
	mac := k.mac(body)
	copy(b[len(b)-proto.ProbeMACLen:], mac[:])
	return b
}

// verify reports whether pkt, a probe's wire form, carries a valid MAC
// under k.
func (k *probeKey) verify(pkt []byte) bool {
	if len(pkt) != proto.ProbeLen {
		return false
	}
	mac := k.mac(pkt[:len(pkt)-proto.ProbeMACLen])
	return hmac.Equal(mac[:], pkt[len(pkt)-proto.ProbeMACLen:])
}

func (k *probeKey) mac(body []byte) [proto.ProbeMACLen]byte {
	m := hmac.New(sha256.New, k[:])
	m.Write(body)
	var out [proto.ProbeMACLen]byte
	copy(out[:], m.Sum(nil))
	return out
}
