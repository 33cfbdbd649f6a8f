package proto

import (
	"bytes"
	"net/netip"
	"testing"
)

// FuzzParseProbe: parsing a discovery or path probe never panics, accepts
// only ProbeLen bytes with the magic and a known type, and what it parses
// encodes back to the same bytes, except an observed address it does not
// accept (unspecified, or port 0), which encodes as zeros.
func FuzzParseProbe(f *testing.F) {
	for _, p := range []Probe{
		{Type: ProbePing, TxID: [12]byte{1, 2, 3}},
		{Type: ProbePong, TxID: [12]byte{4}, Observed: netip.MustParseAddrPort("198.51.100.7:41641")},
		{Type: ProbePong, Key: Key{9}, Observed: netip.MustParseAddrPort("[2001:db8::1]:3478"), MAC: [ProbeMACLen]byte{0xff}},
	} {
		b, _ := p.AppendBinary(nil)
		f.Add(b)
	}
	f.Add([]byte(ProbeMagic))
	f.Add(append([]byte(ProbeMagic), make([]byte, ProbeLen-len(ProbeMagic))...))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, ok := ParseProbe(b)
		if !ok {
			return
		}
		if len(b) != ProbeLen || !IsProbe(b) || (p.Type != ProbePing && p.Type != ProbePong) {
			t.Fatalf("accepted %x", b)
		}
		enc, err := p.AppendBinary(nil)
		if err != nil {
			t.Fatal(err)
		}
		again, ok := ParseProbe(enc)
		if !ok || again != p {
			t.Fatalf("%+v encodes to %x, which parses to %+v, %v", p, enc, again, ok)
		}
		if p.Observed.IsValid() && !bytes.Equal(enc, b) {
			t.Fatalf("%x parses to %+v, which encodes to %x", b, p, enc)
		}
	})
}
