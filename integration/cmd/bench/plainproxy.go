package main

import (
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"

	"k8s.io/client-go/rest"
)

// plainProxy is the mesh GET's path with only its two hops kept: a TCP
// relay where `clustral up`'s SOCKS5 proxy is, and a TLS-terminating
// httputil.ReverseProxy where the agent is, which sends the request on to
// the apiserver as upstream says (the agent's impersonation). It has no
// WireGuard, no netstack, no authorization and no audit, and both hops
// run in the bench's own process: what a GET costs through any two-hop
// proxy on this machine. Close stops both and every relayed connection.
type plainProxy struct {
	relay net.Listener
	srv   *httptest.Server
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// startPlainProxy starts a plainProxy toward upstream and returns it with
// the rest.Config of a client of its relay.
func startPlainProxy(upstream *rest.Config) (*plainProxy, *rest.Config, error) {
	target, err := url.Parse(upstream.Host)
	if err != nil {
		return nil, nil, fmt.Errorf("plain proxy upstream: %w", err)
	}
	tr, err := rest.TransportFor(upstream)
	if err != nil {
		return nil, nil, fmt.Errorf("plain proxy upstream: %w", err)
	}
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target) }, Transport: tr}
	srv := httptest.NewUnstartedServer(rp)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		return nil, nil, fmt.Errorf("plain proxy relay: %w", err)
	}
	p := &plainProxy{relay: l, srv: srv, conns: make(map[net.Conn]struct{})}
	p.wg.Go(p.serve)
	cfg := &rest.Config{
		Host:            "https://" + l.Addr().String(),
		TLSClientConfig: rest.TLSClientConfig{CAData: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})},
	}
	return p, cfg, nil
}

// serve relays each connection to the reverse proxy until the listener
// is closed.
func (p *plainProxy) serve() {
	for {
		c, err := p.relay.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.srv.Listener.Addr().String())
		if err != nil {
			c.Close()
			continue
		}
		if !p.track(c, up) {
			return
		}
		p.wg.Go(func() { io.Copy(up, c); up.Close() })
		p.wg.Go(func() { io.Copy(c, up); c.Close() })
	}
}

// track adds cs to the connections Close closes; it closes them and
// returns false if Close has begun.
func (p *plainProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

// Close stops the relay and the reverse proxy and waits for their
// goroutines.
func (p *plainProxy) Close() error {
	err := p.relay.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
	p.srv.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
