package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"sync/atomic"
	"time"
)

// servingCert is the agent's serving certificate for key, replaced whole
// when the coordinator renews it. Its methods are safe for concurrent use.
type servingCert struct {
	key *ecdsa.PrivateKey
	cur atomic.Pointer[tls.Certificate]
}

// set serves certPEM from now on, if it is a certificate for the agent's
// key; otherwise it returns why and the current certificate stays.
func (s *servingCert) set(certPEM string) error {
	c, err := tlsCertificate(certPEM, s.key)
	if err != nil {
		return err
	}
	s.cur.Store(&c)
	return nil
}

// get is a tls.Config.GetCertificate.
func (s *servingCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.cur.Load(), nil }

func (s *servingCert) expires() time.Time { return s.cur.Load().Leaf.NotAfter }

func tlsCertificate(certPEM string, key *ecdsa.PrivateKey) (tls.Certificate, error) {
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := tls.X509KeyPair([]byte(certPEM), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("agent certificate from the coordinator: %w", err)
	}
	return cert, nil
}

// NewCSR returns a fresh P-256 key, which the caller owns, and the PEM
// certificate request for it that an agent sends when it registers: the
// coordinator issues the agent's serving certificate for that key.
// The integration harness, which registers agents of its own, uses it too.
func NewCSR() (csrPEM string, key *ecdsa.PrivateKey, err error) {
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "clustral-agent"}}, key)
	if err != nil {
		return "", nil, fmt.Errorf("certificate request: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), key, nil
}
