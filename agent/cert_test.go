package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

func TestServingCertificateRenewal(t *testing.T) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(pub *ecdsa.PublicKey, serial int64, ttl time.Duration) string {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), DNSNames: []string{"prod.clustral.internal"},
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(ttl)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s := &servingCert{key: key}
	if err := s.set(issue(&key.PublicKey, 2, time.Hour)); err != nil {
		t.Fatal(err)
	}
	serial := func() int64 {
		c, _ := s.get(nil)
		return c.Leaf.SerialNumber.Int64()
	}
	steps := []struct {
		name   string
		pem    string
		ok     bool
		serial int64
	}{
		{"renewal for the agent's key", issue(&key.PublicKey, 3, 24*time.Hour), true, 3},
		{"certificate for another key", issue(&other.PublicKey, 4, 24*time.Hour), false, 3},
		{"not PEM", "garbage", false, 3},
		{"empty", "", false, 3},
		{"next renewal", issue(&key.PublicKey, 5, 24*time.Hour), true, 5},
	}
	for _, st := range steps {
		err := s.set(st.pem)
		if (err == nil) != st.ok {
			t.Errorf("%s: set = %v, want ok=%v", st.name, err, st.ok)
		}
		if got := serial(); got != st.serial {
			t.Errorf("%s: serving serial %d, want %d", st.name, got, st.serial)
		}
	}
	if time.Until(s.expires()) < 23*time.Hour {
		t.Errorf("expires() = %v, want the renewed certificate's", s.expires())
	}
}

// TestNewCSR: the request parses, is signed by the key returned, and
// names the agent.
func TestNewCSR(t *testing.T) {
	csrPEM, key, err := NewCSR()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode([]byte(csrPEM))
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		t.Fatalf("not a PEM certificate request: %q", csrPEM)
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(csr.PublicKey) {
		t.Error("the request is not for the key returned")
	}
	if csr.Subject.CommonName != "clustral-agent" {
		t.Errorf("request for %q, want clustral-agent", csr.Subject.CommonName)
	}
}
