package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"
)

// DefaultDiscoverInterval is how often RunDiscovery asks the coordinator
// which address the node's NAT maps its WireGuard socket to.
const DefaultDiscoverInterval = 30 * time.Second

// PublishedEndpoints are the UDP endpoints a node publishes: its listen
// port on each non-link-local IPv4 interface address, and first, when
// known, the public address the coordinator's discovery service observed
// (RunDiscovery). Its methods are safe for concurrent use; List is a
// StreamConfig.Endpoints.
type PublishedEndpoints struct {
	port func() uint16

	mu       sync.Mutex
	observed netip.AddrPort
}

// NewPublishedEndpoints returns the endpoints of a node listening on
// port(), with no public address observed yet.
func NewPublishedEndpoints(port func() uint16) *PublishedEndpoints {
	return &PublishedEndpoints{port: port}
}

// List returns the endpoints to publish now.
func (e *PublishedEndpoints) List() []netip.AddrPort {
	out := localEndpoints(e.port())
	e.mu.Lock()
	obs := e.observed
	e.mu.Unlock()
	if obs.IsValid() && !slices.Contains(out, obs) {
		out = append([]netip.AddrPort{obs}, out...)
	}
	return out
}

// setObserved records the observed endpoint and reports whether it changed.
func (e *PublishedEndpoints) setObserved(ap netip.AddrPort) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.observed == ap {
		return false
	}
	e.observed = ap
	return true
}

// localEndpoints lists the candidate UDP endpoints of a node listening on
// port: that port on each non-link-local IPv4 interface address.
func localEndpoints(port uint16) []netip.AddrPort {
	var out []netip.AddrPort
	ifaces, _ := net.InterfaceAddrs()
	for _, a := range ifaces {
		p, err := netip.ParsePrefix(a.String())
		if err != nil || p.Addr().IsLinkLocalUnicast() || !p.Addr().Is4() {
			continue
		}
		out = append(out, netip.AddrPortFrom(p.Addr(), port))
	}
	return out
}

// DiscoveryConfig configures RunDiscovery.
type DiscoveryConfig struct {
	// Server is the coordinator's discovery service, host:port
	// (proto.RegisterResponse.STUN).
	Server string
	// Endpoints records the observed public endpoint.
	Endpoints *PublishedEndpoints
	// Publish sends Endpoints.List to the coordinator (PUT
	// /api/v1/nodes/self/endpoints) after the observed endpoint changed.
	// When it fails, the error is logged and the next round tries again.
	Publish func(ctx context.Context, eps []netip.AddrPort) error
	// Interval is the time between rounds; 0 means
	// DefaultDiscoverInterval.
	Interval time.Duration
	// Logger receives discovery's logs; nil means slog.Default().
	Logger *slog.Logger
}

// RunDiscovery asks the coordinator's discovery service for the node's
// public endpoint now and every cfg.Interval, and publishes the node's
// endpoints again when it changes, until ctx is done.
func (n *Node) RunDiscovery(ctx context.Context, cfg DiscoveryConfig) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	interval := cfg.Interval
	if interval <= 0 {
		interval = DefaultDiscoverInterval
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t.Reset(interval)
		server, err := resolveUDP(ctx, cfg.Server)
		if err != nil {
			log.Warn("endpoint discovery", "err", err)
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		obs, err := n.bind.Discover(dctx, server)
		cancel()
		if err != nil {
			log.Debug("endpoint discovery", "err", err)
			continue
		}
		if !cfg.Endpoints.setObserved(obs) {
			continue
		}
		log.Info("public endpoint discovered", "endpoint", obs)
		if err := cfg.Publish(ctx, cfg.Endpoints.List()); err != nil {
			log.Warn("publish endpoints", "err", err)
			cfg.Endpoints.setObserved(netip.AddrPort{}) // try again next round
		}
	}
}

// resolveUDP resolves a discovery service's host:port to an IPv4
// address.
func resolveUDP(ctx context.Context, hostport string) (netip.AddrPort, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("discovery address %q: %w", hostport, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("discovery address %q: bad port", hostport)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip4", host)
	if err != nil || len(addrs) == 0 {
		return netip.AddrPort{}, fmt.Errorf("resolve discovery host %s: %w", host, errors.Join(err, errors.New("no IPv4 address")))
	}
	return netip.AddrPortFrom(addrs[0].Unmap(), uint16(port)), nil
}
