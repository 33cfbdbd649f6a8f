package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/clustral/clustral/node"
	"github.com/clustral/clustral/proto"
)

// discoverInterval is how often a node asks the coordinator which address
// its NAT maps its WireGuard socket to.
const discoverInterval = 30 * time.Second

// endpoints are the UDP endpoints a node publishes: its local addresses,
// and the public address the coordinator observed, when known.
type endpoints struct {
	port func() uint16

	mu       sync.Mutex
	observed netip.AddrPort
}

func (e *endpoints) list() []netip.AddrPort {
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
func (e *endpoints) setObserved(ap netip.AddrPort) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.observed == ap {
		return false
	}
	e.observed = ap
	return true
}

// runRelay gives m the coordinator's relay until ctx is done.
func runRelay(ctx context.Context, m *mesh, api *apiClient, log *slog.Logger) {
	hc := api.hc
	if tt, ok := hc.Transport.(traceTransport); ok {
		hc = &http.Client{Transport: tt.next} // the upgrade needs the bare transport
	}
	err := m.node.RunRelay(ctx, node.RelayConfig{BaseURL: api.base, Token: api.token, Client: hc, Logger: log})
	if err != nil && ctx.Err() == nil {
		log.Error("relay stopped", "err", err)
	}
}

// runDiscovery asks the coordinator's discovery service (stun, host:port)
// for m's public endpoint now and every discoverInterval, and publishes
// eps again when it changes.
func runDiscovery(ctx context.Context, m *mesh, api *apiClient, stun string, eps *endpoints, log *slog.Logger) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t.Reset(discoverInterval)
		server, err := resolveUDP(ctx, stun)
		if err != nil {
			log.Warn("endpoint discovery", "err", err)
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		obs, err := m.node.Bind().Discover(dctx, server)
		cancel()
		if err != nil {
			log.Debug("endpoint discovery", "err", err)
			continue
		}
		if !eps.setObserved(obs) {
			continue
		}
		log.Info("public endpoint discovered", "endpoint", obs)
		list := eps.list()
		if err := api.do(ctx, "PUT", proto.APIVersion+"/nodes/self/endpoints", proto.EndpointsUpdate{Endpoints: list}, nil); err != nil {
			log.Warn("publish endpoints", "err", err)
			eps.setObserved(netip.AddrPort{}) // try again next round
		}
	}
}

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

// pathView returns how packets reach a peer ("direct", "relayed", or ""
// when unknown) and the last probe round trip in milliseconds.
func (m *mesh) pathView(key proto.Key) (string, float64) {
	st, ok := m.node.PathStatus(key)
	if !ok {
		return "", 0
	}
	path := "direct"
	if st.Path == node.PathRelay {
		path = "relayed"
	}
	return path, float64(st.RTT.Microseconds()) / 1000
}
