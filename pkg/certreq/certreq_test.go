package certreq

import (
	"crypto/x509"
	"encoding/pem"
	"slices"
	"testing"
)

// TestNew: the request parses, is signed by the key returned, and names
// what it was asked to.
func TestNew(t *testing.T) {
	dnsNames := []string{"a.example.com", "b.example.com"}
	csrPEM, key, err := New("clustral-agent", dnsNames...)
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
	if csr.Subject.CommonName != "clustral-agent" || !slices.Equal(csr.DNSNames, dnsNames) {
		t.Errorf("request for %q %v, want clustral-agent %v", csr.Subject.CommonName, csr.DNSNames, dnsNames)
	}
}
