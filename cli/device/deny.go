package device

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/clustral/clustral/proto"
)

// denier answers kubectl locally, in plain text, for a cluster the user
// may not reach now: the map has no agent of it for this device, so no
// request could reach one. It serves TLS with certificates from a CA of
// its own, created in memory for this `clustral up` and trusted only by
// this user's kubeconfig contexts, next to the mesh CA; its key never
// leaves the process.
//
// Each conn is served on a goroutine of its own, which ends when the
// connection closes; Close ends them all and waits for them.
type denier struct {
	user   string
	domain string
	ca     *x509.Certificate
	key    *ecdsa.PrivateKey
	caPEM  []byte

	mu    sync.Mutex
	certs map[string]*tls.Certificate

	serversMu sync.Mutex
	servers   map[*http.Server]net.Conn // serving a conn (its end of the pipe); nil once closed
	wg        sync.WaitGroup            // the servers' Serve calls
}

func newDenier(user, domain string, ttl time.Duration) (*denier, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "clustral up local denials"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		PermittedDNSDomains:   []string{domain},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &denier{user: user, domain: domain, ca: ca, key: key, certs: map[string]*tls.Certificate{}, servers: map[*http.Server]net.Conn{},
		caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

func (d *denier) cert(host string) (*tls.Certificate, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.certs[host]; c != nil {
		return c, nil
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     d.ca.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, d.ca, &d.key.PublicKey, d.key)
	if err != nil {
		return nil, err
	}
	c := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: d.key}
	d.certs[host] = c
	return c, nil
}

// conn returns a connection on which the denial for cluster is served.
func (d *denier) conn(cluster string) net.Conn {
	client, server := net.Pipe()
	host := cluster + "." + d.domain
	tc := tls.Server(server, &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return d.cert(host)
		},
	})
	msg := fmt.Sprintf("%s has no role on cluster '%s'. Ask an admin to assign one, or run: clustral access request --cluster %s --role <role> --reason <why>\n", d.user, cluster, cluster)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set(proto.HeaderErrorCode, string(proto.CodeNoRoleAssignment))
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte(msg))
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       10 * time.Second,
	}
	d.serversMu.Lock()
	defer d.serversMu.Unlock()
	if d.servers == nil { // closed
		server.Close()
		return client
	}
	d.servers[srv] = server
	d.wg.Go(func() {
		srv.Serve(&oneConnListener{c: tc})
		d.serversMu.Lock()
		delete(d.servers, srv)
		d.serversMu.Unlock()
	})
	return client
}

// Close closes the connections conn handed out and waits until their
// servers have stopped. Later conns are closed at once.
func (d *denier) Close() error {
	d.serversMu.Lock()
	servers := d.servers
	d.servers = nil
	d.serversMu.Unlock()
	for srv, c := range servers {
		srv.Close()
		c.Close() // in case srv closed before it took the conn
	}
	d.wg.Wait()
	return nil
}

// oneConnListener hands out one connection, then blocks until closed.
type oneConnListener struct {
	mu   sync.Mutex
	c    net.Conn
	done chan struct{}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.done == nil {
		l.done = make(chan struct{})
	}
	c := l.c
	l.c = nil
	done := l.done
	l.mu.Unlock()
	if c != nil {
		return &closeNotifyConn{Conn: c, l: l}, nil
	}
	<-done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done == nil {
		l.done = make(chan struct{})
	}
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return pipeAddr{} }

// closeNotifyConn closes its listener when the connection closes, so the
// server goroutine ends with it.
type closeNotifyConn struct {
	net.Conn
	l *oneConnListener
}

func (c *closeNotifyConn) Close() error {
	c.l.Close()
	return c.Conn.Close()
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "clustral-up" }
