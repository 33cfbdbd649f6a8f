package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/clustral/clustral/proto"
)

// Serve serves the proxy over plain HTTP on l, for a listener that
// terminates TLS itself and for tests. See ServeTLS.
func (p *Proxy) Serve(l net.Listener) error {
	return p.serve(l, nil)
}

// ServeTLS serves the proxy over HTTPS with cert on l, normally the
// agent's overlay listener :443 inside the netstack, whose connections'
// RemoteAddr is the overlay source address. It speaks HTTP/1.1 to a
// client that offers it, kubectl among them, and HTTP/2 to one that
// offers only h2 (see serverProtos).
//
// A client has 10 s to send a request's headers and 30 s for the whole
// request with its body; a keep-alive connection idle for 2 min is
// closed. Answers are not bounded: watches, logs --follow and upgraded
// streams last until they end or a revocation cuts them.
//
// ServeTLS tracks every connection it accepts, so Reevaluate, ClosePeer
// and Close can cut it. It blocks until l fails or Close is called, and
// always returns a non-nil error: http.ErrServerClosed after Close. It
// closes l when it returns.
func (p *Proxy) ServeTLS(l net.Listener, cert tls.Certificate) error {
	return p.ServeTLSFunc(l, func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil })
}

// ServeTLSFunc is ServeTLS with the certificate chosen for each handshake
// by getCert, for a certificate that is renewed while the proxy runs.
// getCert is called concurrently from every handshake.
func (p *Proxy) ServeTLSFunc(l net.Listener, getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) error {
	return p.serve(l, &tls.Config{
		GetCertificate: getCert,
		MinVersion:     tls.VersionTLS12,
		NextProtos:     serverProtos,
	})
}

// serverProtos are the ALPN protocols of ServeTLS in the order it
// prefers them; TLS takes the server's first that the client offers too.
//
// HTTP/1.1 comes first, although kubectl would take HTTP/2. Through the
// mesh a request costs less on HTTP/1.1: net/http's HTTP/2 server hands
// each request to a new goroutine, passes every frame between it, its
// connection's loop and a new writer goroutine per flush, and sends the
// answer's headers and body in two TCP segments, each a WireGuard
// datagram to encrypt, send, receive and acknowledge. Over HTTP/1.1 the
// connection's goroutine runs the request and writes its answer in one
// segment: a small GET through the mesh is 4 WireGuard datagrams, not
// 5, and the agent spends about a seventh less CPU on it. An agent
// holding 1,000 watches needs less memory, not more: a watch is a
// connection of its own, but an HTTP/2 connection's state outweighs it.
// What HTTP/2 adds for kubectl, pings that find a dead connection, the
// mesh does for it: a node resets its connections to a peer that leaves
// its map.
var serverProtos = []string{"http/1.1", "h2"}

// serverTimeouts are the timeouts of the HTTP servers of Serve and
// ServeTLS.
type serverTimeouts struct {
	// readHeader bounds the request line and headers (and the TLS
	// handshake).
	readHeader time.Duration
	// read bounds a whole request, headers and body, from its first
	// byte: a client that trickles its body is cut (on HTTP/1.1 the
	// connection is closed, on HTTP/2 the stream's body fails). It never
	// cuts an answer, so a watch, logs --follow, a slow list or an
	// upgraded exec, attach or port-forward lasts as long as the
	// apiserver and the revocation rules let it: net/http lifts the
	// connection's read deadline once the body has been read to its end
	// (at once for a request without one) and when a handler hijacks
	// the connection, and on HTTP/2 the deadline only ever fails a body
	// still being read. TestProxyLongRequestsOutliveTimeouts holds this.
	read time.Duration
	// idle bounds a keep-alive connection between two requests.
	idle time.Duration
}

// defaultServerTimeouts: the header and body bounds are generous for a
// client on the overlay; the idle bound outlasts client-go's own (90 s),
// so kubectl normally closes first.
var defaultServerTimeouts = serverTimeouts{readHeader: 10 * time.Second, read: 30 * time.Second, idle: 2 * time.Minute}

// orDefaults returns t with its unset fields taken from
// defaultServerTimeouts.
func (t serverTimeouts) orDefaults() serverTimeouts {
	d := defaultServerTimeouts
	if t.readHeader > 0 {
		d.readHeader = t.readHeader
	}
	if t.read > 0 {
		d.read = t.read
	}
	if t.idle > 0 {
		d.idle = t.idle
	}
	return d
}

func (p *Proxy) serve(l net.Listener, tlsConf *tls.Config) error {
	srv := &http.Server{
		Handler:           p,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: p.timeouts.readHeader,
		ReadTimeout:       p.timeouts.read,
		IdleTimeout:       p.timeouts.idle,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ConnContext:       connContext,
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		l.Close()
		return http.ErrServerClosed
	}
	p.servers[srv] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.servers, srv)
		p.mu.Unlock()
	}()

	tl := &trackingListener{Listener: l, p: p}
	defer tl.Close()
	if tlsConf != nil {
		return srv.ServeTLS(tl, "", "")
	}
	return srv.Serve(tl)
}

// trackingListener registers every connection it accepts with its Proxy.
type trackingListener struct {
	net.Listener
	p *Proxy
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, p: l.p}
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		tc.addr = ap.Addr().Unmap()
	}
	p := l.p
	p.mu.Lock()
	closed := p.closed
	if !closed {
		p.conns[tc] = struct{}{}
	}
	p.mu.Unlock()
	if closed {
		c.Close()
		return nil, http.ErrServerClosed
	}
	return tc, nil
}

// trackedConn is a client connection known to its Proxy. Close removes it
// from the Proxy's books whoever calls it: the http.Server, ReverseProxy
// after a hijack, or a revocation.
type trackedConn struct {
	net.Conn
	p    *Proxy
	addr netip.Addr

	// Guarded by p.mu.
	pinned bool
	key    proto.Key

	closeOnce sync.Once
	closeErr  error
}

func (c *trackedConn) Close() error {
	c.closeOnce.Do(func() {
		p := c.p
		p.mu.Lock()
		delete(p.conns, c)
		if c.pinned {
			if pl := p.live[c.key]; pl != nil {
				delete(pl.conns, c)
				p.dropIfEmptyLocked(c.key, pl)
			}
		}
		p.mu.Unlock()
		c.closeErr = c.Conn.Close()
	})
	return c.closeErr
}

// CloseWrite half-closes the connection when the underlying one can, so
// an upgraded stream can pass on the end of one direction.
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

type connKey struct{}

// connContext is the http.Server hook that makes a request's trackedConn
// reachable from its context.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	if tc, ok := c.(*trackedConn); ok {
		return context.WithValue(ctx, connKey{}, tc)
	}
	return ctx
}

func connFrom(ctx context.Context) *trackedConn {
	c, _ := ctx.Value(connKey{}).(*trackedConn)
	return c
}

// Shutdown drains the proxy: it stops accepting connections, lets the
// requests in flight — watches and upgraded streams included — finish
// until ctx is done, then closes whatever is left, as Close does. It is
// what the agent does on SIGTERM.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	servers := make([]*http.Server, 0, len(p.servers))
	for srv := range p.servers {
		servers = append(servers, srv)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, srv := range servers {
		wg.Go(func() { srv.Shutdown(ctx) })
	}
	wg.Wait()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for p.liveStreams() > 0 {
		select {
		case <-ctx.Done():
			p.log.Warn("drain timed out; closing the remaining streams", "streams", p.liveStreams())
			return p.Close()
		case <-t.C:
		}
	}
	return p.Close()
}

func (p *Proxy) liveStreams() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, pl := range p.live {
		n += len(pl.streams)
	}
	return n
}
