package agent

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

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/clustral/clustral/netstack"
	"github.com/clustral/clustral/node"
	"github.com/clustral/clustral/proto"
)

// discoverInterval is how often the agent asks the coordinator which
// address its NAT maps its WireGuard socket to.
const discoverInterval = 30 * time.Second

// mesh is the agent's node joined to the overlay: a userspace netstack
// with the agent's overlay addresses and a WireGuard node on it. Close
// releases both.
type mesh struct {
	stack *netstack.Stack
	node  *node.Node
	log   *slog.Logger
}

// joinMesh brings up the WireGuard node of a registered agent on a
// userspace netstack, so its listeners exist only inside the overlay.
func joinMesh(priv wgtypes.Key, reg proto.RegisterResponse, listenPort int, log *slog.Logger) (*mesh, error) {
	var addrs []netip.Addr
	for _, p := range reg.Addresses {
		addrs = append(addrs, p.Addr())
	}
	st, err := netstack.New(netstack.Config{Addrs: addrs, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("netstack: %w", err)
	}
	n, err := node.New(node.Config{PrivateKey: priv, TUN: st.TUN(), ListenPort: listenPort, Logger: log, Relay: true})
	if err != nil {
		return nil, fmt.Errorf("wireguard node: %w", err)
	}
	m := &mesh{stack: st, node: n, log: log}
	n.OnChange(m.resetRemoved)
	return m, nil
}

// resetRemoved resets the connections of peers that left the map. Their
// packets can no longer flow either way, so neither side would otherwise
// learn that the connection is gone. Reset rather than close: FINs and
// data retried toward the peer would start a WireGuard handshake the
// moment it comes back, crossing its own and stalling the pair.
func (m *mesh) resetRemoved(ch node.Change) {
	if len(ch.Removed) == 0 {
		return
	}
	var addrs []netip.Addr
	for _, p := range ch.Removed {
		for _, a := range p.Addresses {
			addrs = append(addrs, a.Addr())
		}
	}
	if n := m.stack.AbortTCP(addrs...); n > 0 {
		m.log.Debug("reset connections to peers that left the map", "peers", len(ch.Removed), "conns", n)
	}
}

// Close stops the node, which closes its netstack.
func (m *mesh) Close() error { return m.node.Close() }

// runMapStream keeps m in step with the coordinator until ctx is done:
// it holds the map stream, publishing the node's local endpoints and the
// public one the coordinator's discovery service (stun, host:port; ""
// when it has none) observes, and the relay. It returns when ctx is done
// (nil) or when the coordinator refuses the node token, after the relay
// and discovery have stopped.
func runMapStream(ctx context.Context, m *mesh, api *coordClient, stun string, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	eps := &endpoints{port: m.node.ListenPort}
	wg.Go(func() {
		err := m.node.RunRelay(ctx, node.RelayConfig{BaseURL: api.base, Token: api.token, Client: api.hc, Logger: log})
		if err != nil && ctx.Err() == nil {
			log.Error("relay stopped", "err", err)
		}
	})
	if stun != "" {
		wg.Go(func() { runDiscovery(ctx, m, api, stun, eps, log) })
	}
	s, err := node.NewStream(m.node, node.StreamConfig{
		BaseURL:   api.base,
		Token:     api.token,
		Client:    api.hc,
		Endpoints: eps.list,
		Logger:    log,
	})
	if err != nil {
		return err
	}
	err = s.Run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// endpoints are the UDP endpoints the agent publishes: its local
// addresses, and the public address the coordinator observed, when known.
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

// localEndpoints lists the node's candidate UDP endpoints: its listen
// port on each non-link-local IPv4 interface address.
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

// runDiscovery asks the coordinator's discovery service (stun, host:port)
// for m's public endpoint now and every discoverInterval, and publishes
// eps again when it changes, until ctx is done.
func runDiscovery(ctx context.Context, m *mesh, api *coordClient, stun string, eps *endpoints, log *slog.Logger) {
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
		if err := api.publishEndpoints(ctx, eps.list()); err != nil {
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
