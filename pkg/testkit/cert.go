package testkit

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"testing"
	"time"
)

// CSR returns a PEM certificate request for a fresh P-256 key, with the
// common name cn and the DNS names dnsNames, and that key. It fails tb if
// either cannot be made.
func CSR(tb testing.TB, cn string, dnsNames ...string) (csrPEM string, key *ecdsa.PrivateKey) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, DNSNames: dnsNames}, key)
	if err != nil {
		tb.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), key
}

// ServerCert returns a self-signed PEM certificate for serving TLS on
// 127.0.0.1 with the common name cn (see SelfSigned), and its PEM key. It
// fails tb if they cannot be made.
func ServerCert(tb testing.TB, cn string) (certPEM, keyPEM []byte) {
	tb.Helper()
	certPEM, keyPEM, err := SelfSigned(cn, "127.0.0.1")
	if err != nil {
		tb.Fatal(err)
	}
	return certPEM, keyPEM
}

// TLSCert is ServerCert as a tls.Certificate, for a server that needs no
// PEM.
func TLSCert(tb testing.TB, cn string) tls.Certificate {
	tb.Helper()
	cert, err := tls.X509KeyPair(ServerCert(tb, cn))
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

// SelfSigned returns a PEM certificate for a fresh P-256 key, with the
// common name cn, for serving TLS as hosts (IP addresses or DNS names),
// valid from an hour ago for two hours and signed by itself as a CA, so
// that a client may trust it as its own root; and the key, PEM (PKCS #8).
func SelfSigned(cn string, hosts ...string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("self-signed certificate for %s: %w", cn, err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), nil
}

// OneConnClient returns a client that opens at most one connection to a
// host and keeps it for the next request, trusts any server certificate
// (for tests of which certificate a server presents), and gives up on a
// request after 5 seconds.
func OneConnClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1,
	}}
}

// ServedCN makes a GET request to url on c and returns the common name of
// the certificate the server presented on the connection it went over.
func ServedCN(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		return "", fmt.Errorf("GET %s: no TLS certificate", url)
	}
	return resp.TLS.PeerCertificates[0].Subject.CommonName, nil
}

// CA is a throwaway certificate authority, for a test or a test
// environment's component. It is safe for concurrent use.
type CA struct {
	Cert *x509.Certificate
	// CertPEM is the PEM-encoded CA certificate.
	CertPEM []byte
	key     crypto.Signer
}

// NewCA creates a self-signed CA valid for a day.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca %s: %w", name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("ca %s: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca %s: %w", name, err)
	}
	return &CA{Cert: cert, CertPEM: pemBlock("CERTIFICATE", der), key: key}, nil
}

// Issue returns a PEM certificate and PEM PKCS#8 key for cn, valid for
// serving the given hosts (DNS names or IP addresses) and, if client is
// set, for client authentication too. Groups become the subject's
// organizations, which Kubernetes reads as groups.
func (ca *CA) Issue(cn string, groups []string, hosts []string, client bool) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s: %w", cn, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: groups},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s: %w", cn, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s: %w", cn, err)
	}
	return pemBlock("CERTIFICATE", der), pemBlock("PRIVATE KEY", keyDER), nil
}

// Pool returns a cert pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// HTTPClient returns a client trusting only this CA (and the given extra
// PEM CAs).
func (ca *CA) HTTPClient(extraPEM ...[]byte) *http.Client {
	return HTTPClient(append([][]byte{ca.CertPEM}, extraPEM...)...)
}

// HTTPClient returns a client trusting only the CAs in caPEMs, which
// gives up on a request after 30 seconds.
func HTTPClient(caPEMs ...[]byte) *http.Client {
	pool := x509.NewCertPool()
	for _, p := range caPEMs {
		pool.AppendCertsFromPEM(p)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}
