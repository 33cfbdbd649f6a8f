package coordinator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"slices"
	"time"
)

// meshCA is the mesh's certificate authority. It issues each agent a
// serving certificate for <cluster>.<mesh domain> and the agent's overlay
// addresses. Its key is kept in the store and never leaves the coordinator.
//
// The CA certificate is name-constrained to the mesh domain and the overlay
// prefixes: a client that trusts the mesh CA (the kubeconfig contexts of
// clustral up) cannot be made to accept a certificate for any other name,
// even one the CA's key signed.
type meshCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

const (
	// agentCertTTL is the lifetime of an agent serving certificate. It is
	// short because certificates are not revoked: an agent that is removed
	// (or whose cluster is) stops being renewed, and its certificate is
	// worthless a day later at most.
	agentCertTTL = 24 * time.Hour
	// agentCertRenew is how often an agent's open map stream carries a new
	// certificate. A snapshot (every stream open) carries one too, so an
	// agent survives an outage of the coordinator of agentCertTTL minus
	// agentCertRenew.
	agentCertRenew = 8 * time.Hour
)

// newMeshCA creates a CA constrained to domain and prefixes. It returns
// the CA and its PEM encoding (certificate and key) for the store.
func newMeshCA(now time.Time, domain string, prefixes []netip.Prefix) (*meshCA, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	return signMeshCA(key, now, domain, prefixes)
}

// signMeshCA makes the self-signed CA certificate for key, constrained to
// domain and prefixes.
func signMeshCA(key *ecdsa.PrivateKey, now time.Time, domain string, prefixes []netip.Prefix) (*meshCA, []byte, error) {
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "clustral mesh CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		// Critical, so that a verifier that cannot check name constraints
		// refuses the chain instead of ignoring them.
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         []string{domain},
		PermittedIPRanges:           ipNets(prefixes),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign mesh CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	stored := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...)
	ca, err := loadMeshCA(stored)
	return ca, stored, err
}

func ipNets(prefixes []netip.Prefix) []*net.IPNet {
	var out []*net.IPNet
	for _, p := range prefixes {
		p = p.Masked()
		out = append(out, &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())})
	}
	return out
}

// constrainedTo reports whether the CA certificate permits exactly domain
// and prefixes.
func (ca *meshCA) constrainedTo(domain string, prefixes []netip.Prefix) bool {
	if !ca.cert.PermittedDNSDomainsCritical || !slices.Equal(ca.cert.PermittedDNSDomains, []string{domain}) {
		return false
	}
	want := ipNets(prefixes)
	got := ca.cert.PermittedIPRanges
	if len(got) != len(want) {
		return false
	}
	for i := range want {
		if got[i].String() != want[i].String() {
			return false
		}
	}
	return true
}

// constrain returns ca, or when its certificate does not carry exactly the
// given constraints (a CA created before constraints existed, or a mesh
// domain changed in the configuration), a new CA certificate for the same
// key with them, and its PEM encoding for the store. Certificates the old
// CA certificate issued verify under the new one: the key and subject are
// the same.
func (ca *meshCA) constrain(now time.Time, domain string, prefixes []netip.Prefix) (*meshCA, []byte, error) {
	if ca.constrainedTo(domain, prefixes) {
		return ca, nil, nil
	}
	return signMeshCA(ca.key, now, domain, prefixes)
}

func loadMeshCA(stored []byte) (*meshCA, error) {
	var ca meshCA
	rest := stored
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch b.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("mesh CA certificate: %w", err)
			}
			ca.cert = c
			ca.certPEM = pem.EncodeToMemory(b)
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("mesh CA key: %w", err)
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, errors.New("mesh CA key is not ECDSA")
			}
			ca.key = ek
		}
	}
	if ca.cert == nil || ca.key == nil {
		return nil, errors.New("mesh CA in store is incomplete")
	}
	return &ca, nil
}

// csrPublicKey checks the agent's certificate request and returns its
// public key, PKIX DER-encoded. Only the key is used; the request's names
// are ignored.
func csrPublicKey(csrPEM string) ([]byte, error) {
	b, _ := pem.Decode([]byte(csrPEM))
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("csr is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr signature: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(csr.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("csr public key: %w", err)
	}
	return der, nil
}

// issue signs a serving certificate for the public key pubDER (PKIX DER,
// from csrPublicKey) with the given names and addresses, valid for
// agentCertTTL from now. Names come from the coordinator, never from the
// agent.
func (ca *meshCA) issue(pubDER []byte, dnsNames []string, addrs []netip.Prefix, now time.Time) (string, error) {
	pub, err := x509.ParsePKIXPublicKey(pubDER)
	if err != nil {
		return "", fmt.Errorf("agent public key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: dnsNames[0]},
		DNSNames:     dnsNames,
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(agentCertTTL),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, p := range addrs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, p.Addr().AsSlice())
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return "", fmt.Errorf("sign agent certificate: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n
}
