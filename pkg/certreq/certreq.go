// Package certreq makes the certificate request a node sends the
// coordinator to be issued a serving certificate: the agent when it
// registers, and the tests and benchmarks that register as one.
package certreq

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
)

// New returns a PEM certificate request for a fresh P-256 key, with the
// common name cn and the DNS names dnsNames, and that key, which the
// caller owns.
func New(cn string, dnsNames ...string) (csrPEM string, key *ecdsa.PrivateKey, err error) {
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, DNSNames: dnsNames}, key)
	if err != nil {
		return "", nil, fmt.Errorf("certificate request: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), key, nil
}
