package coordinator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/netip"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

func parseCertPEM(t *testing.T, s string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		t.Fatalf("no PEM certificate in %q", s)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// verifyAgentCert checks that cert is a serving certificate for key under
// the mesh CA in caPEM, for name, valid at now, and expires in about a
// day.
func verifyAgentCert(t *testing.T, certPEM, caPEM string, key *ecdsa.PrivateKey, name string, now time.Time) *x509.Certificate {
	t.Helper()
	c := parseCertPEM(t, certPEM)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(caPEM))
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool, DNSName: name, CurrentTime: now}); err != nil {
		t.Fatalf("agent certificate does not verify for %s: %v", name, err)
	}
	if !key.PublicKey.Equal(c.PublicKey) {
		t.Fatal("agent certificate is not for the key of the agent's certificate request")
	}
	// Not agentCertTTL: the test holds the bound even if the constant
	// drifts.
	if life := c.NotAfter.Sub(now); life > 24*time.Hour || life < 23*time.Hour {
		t.Fatalf("agent certificate lives %v from now, want about 24h", life)
	}
	return c
}

func TestAgentCertificateIsShortLivedAndRenewedOverTheMapStream(t *testing.T) {
	e := newTestEnv(t)
	e.srv.certRenew.Store(int64(50 * time.Millisecond))
	admin := e.login("admin@example.com")
	cl := e.createCluster(admin.Token, "prod")
	csr, key := testkit.CSR(t, "agent")
	var reg proto.RegisterResponse
	e.must("POST", "/api/v1/agents", cl.JoinToken, proto.RegisterAgentRequest{PublicKey: newKey(t), CSR: csr}, &reg)
	first := verifyAgentCert(t, reg.Certificate, reg.CABundle, key, "prod.clustral.internal", time.Now())

	am := e.openMap(reg.NodeToken)
	snap := am.next()
	if !snap.Snapshot || snap.Certificate == "" {
		t.Fatalf("agent snapshot carries no certificate: %+v", snap)
	}
	seen := map[string]bool{first.SerialNumber.String(): true}
	c := verifyAgentCert(t, snap.Certificate, snap.CABundle, key, "prod.clustral.internal", time.Now())
	seen[c.SerialNumber.String()] = true
	renewed := am.next()
	if renewed.Snapshot || renewed.Version != snap.Version+1 || renewed.Certificate == "" || len(renewed.Peers)+len(renewed.Removed) != 0 {
		t.Fatalf("renewal message = %+v, want a delta carrying only a certificate", renewed)
	}
	c = verifyAgentCert(t, renewed.Certificate, snap.CABundle, key, "prod.clustral.internal", time.Now())
	if seen[c.SerialNumber.String()] {
		t.Fatal("renewal repeated an earlier certificate")
	}

	// A device never gets a certificate.
	alice := e.login("alice@example.com")
	var dev proto.RegisterResponse
	e.must("POST", "/api/v1/devices", alice.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}, &dev)
	if m := e.openMap(dev.NodeToken).next(); m.Certificate != "" || dev.Certificate != "" {
		t.Fatal("a device was given a serving certificate")
	}

	// Deleting the cluster removes the agent: its stream ends and no
	// renewal follows, so its last certificate dies within agentCertTTL.
	e.must("DELETE", "/api/v1/clusters/prod", admin.Token, nil, nil)
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m, ok := <-am.msgs:
			if !ok {
				return
			}
			if m.Certificate != "" {
				// One renewal may have been written before the delete.
				continue
			}
		case <-deadline:
			t.Fatal("agent stream still open after its cluster was deleted")
		}
	}
}

func TestMeshCAIsNameConstrained(t *testing.T) {
	e := newTestEnv(t)
	ca := e.srv.ca.cert
	if !ca.PermittedDNSDomainsCritical || len(ca.PermittedDNSDomains) != 1 || ca.PermittedDNSDomains[0] != "clustral.internal" {
		t.Fatalf("mesh CA DNS constraints = %v (critical %v), want [clustral.internal] critical", ca.PermittedDNSDomains, ca.PermittedDNSDomainsCritical)
	}
	if len(ca.PermittedIPRanges) != 2 {
		t.Fatalf("mesh CA IP constraints = %v, want the two overlay prefixes", ca.PermittedIPRanges)
	}

	// Even a certificate the CA's key signs is refused outside the mesh.
	csr, _ := testkit.CSR(t, "agent")
	pub, err := csrPublicKey(csr)
	if err != nil {
		t.Fatal(err)
	}
	inside := netip.MustParsePrefix(e.srv.cfg.IPv4Prefix.Addr().Next().String() + "/32")
	tests := []struct {
		name   string
		dns    string
		addrs  []netip.Prefix
		verify string
		ok     bool
	}{
		{"mesh name", "prod.clustral.internal", []netip.Prefix{inside}, "prod.clustral.internal", true},
		{"foreign name", "kubernetes.example.com", nil, "kubernetes.example.com", false},
		{"foreign name next to a mesh one", "evil.example.com", []netip.Prefix{inside}, "evil.example.com", false},
		{"address outside the overlay", "prod.clustral.internal", []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32")}, "prod.clustral.internal", false},
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.srv.ca.certPEM)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPEM, err := e.srv.ca.issue(pub, []string{tt.dns}, tt.addrs, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			c := parseCertPEM(t, certPEM)
			_, err = c.Verify(x509.VerifyOptions{Roots: pool, DNSName: tt.verify})
			if (err == nil) != tt.ok {
				t.Fatalf("verify = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// TestMeshCAConstraintsAddedToAnExistingCA covers a store whose CA predates
// name constraints: the certificate is re-signed for the same key at start,
// and certificates issued before still verify.
func TestMeshCAConstraintsAddedToAnExistingCA(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(), Subject: pkix.Name{CommonName: "clustral mesh CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	old, err := loadMeshCA(append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...))
	if err != nil {
		t.Fatal(err)
	}
	csr, agentKey := testkit.CSR(t, "agent")
	pub, _ := csrPublicKey(csr)
	prefixes := []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd00:1::/48")}
	leaf, err := old.issue(pub, []string{"prod.clustral.internal"}, []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")}, now)
	if err != nil {
		t.Fatal(err)
	}

	ca, stored, err := old.constrain(now, "clustral.internal", prefixes)
	if err != nil {
		t.Fatal(err)
	}
	if stored == nil || !ca.constrainedTo("clustral.internal", prefixes) {
		t.Fatal("an unconstrained CA was not re-signed with constraints")
	}
	verifyAgentCert(t, leaf, string(ca.certPEM), agentKey, "prod.clustral.internal", now)
	if _, again, _ := ca.constrain(now, "clustral.internal", prefixes); again != nil {
		t.Fatal("a CA with the right constraints was re-signed")
	}
	if _, again, _ := ca.constrain(now, "other.internal", prefixes); again == nil {
		t.Fatal("a changed mesh domain kept the old constraints")
	}
}
