package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/clustral/clustral/netstack"
	"github.com/clustral/clustral/node"
	"github.com/clustral/clustral/proto"
)

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

	eps := node.NewPublishedEndpoints(m.node.ListenPort)
	wg.Go(func() {
		err := m.node.RunRelay(ctx, node.RelayConfig{BaseURL: api.base, Token: api.token, Client: api.hc, Logger: log})
		if err != nil && ctx.Err() == nil {
			log.Error("relay stopped", "err", err)
		}
	})
	if stun != "" {
		wg.Go(func() {
			m.node.RunDiscovery(ctx, node.DiscoveryConfig{Server: stun, Endpoints: eps, Publish: api.publishEndpoints, Logger: log})
		})
	}
	s, err := node.NewStream(m.node, node.StreamConfig{
		BaseURL:   api.base,
		Token:     api.token,
		Client:    api.hc,
		Endpoints: eps.List,
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
