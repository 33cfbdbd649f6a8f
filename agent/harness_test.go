package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

const agentToken = "agent-sa-token"

var loopback = netip.MustParseAddr("127.0.0.1")

// fakePeers is a map the test edits.
type fakePeers struct {
	mu sync.Mutex
	m  map[netip.Addr]proto.Peer
}

func (f *fakePeers) PeerByAddr(a netip.Addr) (proto.Peer, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.m[a]
	return p, ok
}

func (f *fakePeers) set(a netip.Addr, p proto.Peer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = make(map[netip.Addr]proto.Peer)
	}
	f.m[a] = p
}

func (f *fakePeers) remove(a netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, a)
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func device(key byte, login string, roles ...proto.RoleGrant) proto.Peer {
	return proto.Peer{
		Key:  proto.Key{key},
		Kind: proto.KindDevice,
		Identity: &proto.Identity{
			UserID:  "u-" + login,
			Login:   login,
			Roles:   roles,
			Expires: t0.Add(24 * time.Hour),
		},
	}
}

func grant(role string, groups ...string) proto.RoleGrant {
	return proto.RoleGrant{Role: role, Groups: groups}
}

// harness is a proxy served over TLS on loopback in front of a fake
// apiserver (an HTTP/2-capable TLS httptest server). Peers maps 127.0.0.1
// to alice by default.
type harness struct {
	tb       testing.TB
	peers    *fakePeers
	clock    *fakeClock
	proxy    *Proxy
	addr     string
	upstream *httptest.Server
	tlsConf  *tls.Config
	logs     *testkit.Buffer
	// client speaks HTTP/2 to the proxy: it offers only h2, so the
	// proxy's HTTP/2 server is what these tests reach. kubectl, which
	// offers both, is served HTTP/1.1 (see serverProtos and h.kubectl).
	client *http.Client
	// kubectl offers h2 and http/1.1, in that order, as client-go does.
	kubectl *http.Client
}

// proxyCert is the proxy's serving certificate, for the name of the
// cluster prod; clients trust it as their root.
var proxyCert = sync.OnceValues(func() (tls.Certificate, error) {
	certPEM, keyPEM, err := testkit.SelfSigned("prod.clustral.internal", "prod.clustral.internal")
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
})

func newHarness(tb testing.TB, upstream http.Handler, configure ...func(*ProxyConfig)) *harness {
	tb.Helper()
	up := httptest.NewUnstartedServer(upstream)
	up.EnableHTTP2 = true
	up.StartTLS()
	tb.Cleanup(up.Close)

	h := &harness{
		tb:       tb,
		peers:    &fakePeers{},
		clock:    &fakeClock{now: t0},
		upstream: up,
		logs:     &testkit.Buffer{},
	}
	h.peers.set(loopback, device(1, "alice@example.com", grant("dev", "developers", "viewers"), grant("view", "viewers")))

	cfg := ProxyConfig{
		Cluster: "prod",
		Upstream: &rest.Config{
			Host:            up.URL,
			BearerToken:     agentToken,
			TLSClientConfig: rest.TLSClientConfig{CAData: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw})},
		},
		Peers:  h.peers,
		Now:    h.clock.Now,
		Logger: slog.New(slog.NewTextHandler(h.logs, nil)),
	}
	for _, f := range configure {
		f(&cfg)
	}
	p, err := NewProxy(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	h.proxy = p

	cert, err := proxyCert()
	if err != nil {
		tb.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	h.addr = l.Addr().String()
	served := make(chan error, 1)
	go func() { served <- p.ServeTLS(l, cert) }()
	tb.Cleanup(func() {
		p.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			tb.Errorf("ServeTLS returned %v, want http.ErrServerClosed", err)
		}
	})

	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	h.tlsConf = &tls.Config{RootCAs: roots, ServerName: "prod.clustral.internal"}
	var h2 http.Protocols
	h2.SetHTTP2(true)
	h.client = h.newClient(h2)
	var both http.Protocols
	both.SetHTTP1(true)
	both.SetHTTP2(true)
	h.kubectl = h.newClient(both)
	return h
}

// newClient returns a client of the proxy that offers protos in ALPN.
func (h *harness) newClient(protos http.Protocols) *http.Client {
	tr := &http.Transport{
		TLSClientConfig: h.tlsConf.Clone(),
		Protocols:       &protos,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", h.addr)
		},
	}
	h.tb.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func (h *harness) url(path string) string { return "https://prod.clustral.internal" + path }

// get sends a GET through the proxy and returns the response with its body
// read.
func (h *harness) get(path string) (*http.Response, string) {
	h.tb.Helper()
	resp, err := h.client.Get(h.url(path))
	if err != nil {
		h.tb.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.tb.Fatalf("GET %s: read body: %v", path, err)
	}
	return resp, string(b)
}

// postUnended POSTs a configmap through the proxy whose body starts with
// partial and never ends, and returns the response with its body read,
// once the proxy has answered.
func (h *harness) postUnended(partial string) (*http.Response, string) {
	h.tb.Helper()
	body, bw := io.Pipe()
	h.tb.Cleanup(func() { bw.Close() })
	go bw.Write([]byte(partial)) // the rest never comes
	req, err := http.NewRequest("POST", h.url("/api/v1/namespaces/default/configmaps"), body)
	if err != nil {
		h.tb.Fatal(err)
	}
	type result struct {
		resp *http.Response
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := h.client.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- result{resp, string(b), err}
	}()
	r := testkit.Recv(h.tb, done, "the answer to the unended request")
	if r.err != nil {
		h.tb.Fatal(r.err)
	}
	return r.resp, r.body
}

// rawConn is an HTTP/1.1 TLS connection to the proxy, as kubectl opens for
// upgrades.
type rawConn struct {
	*tls.Conn
	br *bufio.Reader
}

func (h *harness) dial() *rawConn {
	h.tb.Helper()
	conf := h.tlsConf.Clone()
	conf.NextProtos = []string{"http/1.1"}
	c, err := tls.Dial("tcp", h.addr, conf)
	if err != nil {
		h.tb.Fatal(err)
	}
	h.tb.Cleanup(func() { c.Close() })
	return &rawConn{Conn: c, br: bufio.NewReader(c)}
}

// do writes a request head verbatim (extra holds header lines, each ending
// in \r\n) and reads the response head.
func (c *rawConn) do(tb testing.TB, method, path, extra string) *http.Response {
	tb.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: prod.clustral.internal\r\n%s\r\n", method, path, extra); err != nil {
		tb.Fatal(err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		tb.Fatalf("%s %s: read response: %v", method, path, err)
	}
	return resp
}

// waitClosed fails unless reading from c ends within a few seconds, and
// returns what was read.
func (c *rawConn) waitClosed(tb testing.TB) {
	tb.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, c.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		tb.Fatalf("connection still open after 5s")
	}
}
