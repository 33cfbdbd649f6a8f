package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/clustral/clustral/node"
	"github.com/clustral/clustral/pkg/coordclient"
)

// discoverInterval is how often a node asks the coordinator which address
// its NAT maps its WireGuard socket to.
const discoverInterval = 30 * time.Second

// Coordinator is how a mesh reaches the coordinator as its node.
type Coordinator struct {
	// Client reaches the coordinator with the node token from the
	// registration: the map stream, and the node's endpoints when
	// endpoint discovery finds a new public one.
	Client *coordclient.Client
	// RelayClient carries the relay, an HTTP upgrade: its transport must
	// be a bare *http.Transport. Nil means Client's *http.Client.
	RelayClient *http.Client
	// RelayFirst, if set, is called once Run is done waiting for the
	// relay's first connection, before it opens the map stream.
	RelayFirst func()
}

// Run keeps m in step with the coordinator until ctx is done or the map
// stream fails: it runs the map stream, publishing the node's local
// endpoints and the public one the coordinator's discovery service
// observes, and holds the relay open. It returns nil once ctx is done,
// and only after the relay and discovery it started have stopped.
func (m *Mesh) Run(ctx context.Context, c Coordinator) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel: defers run last-in first-out
	eps := &endpoints{port: m.Node.ListenPort}
	relayUp := make(chan struct{}, 1)
	wg.Go(func() {
		m.runRelay(ctx, c, func() {
			select {
			case relayUp <- struct{}{}:
			default:
			}
		})
	})
	// The map stream and endpoint discovery publish this node's
	// endpoints, and a peer starts its handshake as soon as it has them,
	// over the relay while no direct path is confirmed. Until this node's
	// relay connection is up the coordinator could not deliver that
	// initiation, and the pair would wait for a retry: let the relay
	// connect first, for a bounded time.
	select {
	case <-relayUp:
	case <-time.After(relayFirstWait):
		m.log.Warn("relay not connected yet; publishing endpoints anyway", "waited", relayFirstWait)
	case <-ctx.Done():
		return nil
	}
	if c.RelayFirst != nil {
		c.RelayFirst()
	}
	if m.reg.STUN != "" {
		wg.Go(func() { m.runDiscovery(ctx, c, m.reg.STUN, eps) })
	}
	s, err := node.NewStream(m.Node, node.StreamConfig{
		BaseURL:   c.Client.URLs(),
		Token:     c.Client.Token(),
		Client:    c.Client.HTTPClient(),
		Endpoints: eps.list,
		// A stream's open carries the endpoints known when it was sent;
		// discovery may have published newer ones that the coordinator
		// took first, and the open then replaced them with the stale
		// list. Peers would never learn this node's public endpoint
		// (discovery publishes only changes), and no direct path could
		// be punched through its NAT. Publish again when they differ.
		Synced: func(published []netip.AddrPort) {
			if eps.stale(published) {
				wg.Go(func() { m.publish(ctx, c, eps) })
			}
		},
		Logger: m.log,
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

// relayFirstWait bounds how long Run waits for the relay to connect
// before it publishes this node's endpoints.
const relayFirstWait = time.Second

// runRelay gives m the coordinator's relay until ctx is done, calling
// onConnect each time its connection is up.
func (m *Mesh) runRelay(ctx context.Context, c Coordinator, onConnect func()) {
	hc := c.RelayClient
	if hc == nil {
		hc = c.Client.HTTPClient()
	}
	err := m.Node.RunRelay(ctx, node.RelayConfig{BaseURL: c.Client.URLs(), Token: c.Client.Token(), Client: hc, Logger: m.log, OnConnect: onConnect})
	if err != nil && ctx.Err() == nil {
		m.log.Error("relay stopped", "err", err)
	}
}

// runDiscovery asks the coordinator's discovery service (stun, host:port)
// for m's public endpoint now and every discoverInterval, and publishes
// eps again when it changes.
func (m *Mesh) runDiscovery(ctx context.Context, c Coordinator, stun string, eps *endpoints) {
	log := m.log
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
		obs, err := m.Node.Bind().Discover(dctx, server)
		cancel()
		if err != nil {
			log.Debug("endpoint discovery", "err", err)
			continue
		}
		if !eps.setObserved(obs) {
			continue
		}
		log.Info("public endpoint discovered", "endpoint", obs)
		if err := eps.publish(ctx, c.Client); err != nil {
			log.Warn("publish endpoints", "err", err)
			eps.setObserved(netip.AddrPort{}) // try again next round
		}
	}
}

// publish publishes eps again, after a map stream open that may have
// replaced them with an older list.
func (m *Mesh) publish(ctx context.Context, c Coordinator, eps *endpoints) {
	if err := eps.publish(ctx, c.Client); err != nil && ctx.Err() == nil {
		m.log.Warn("publish endpoints", "err", err)
	}
}

// endpoints are the UDP endpoints a node publishes: its local addresses,
// and the public address the coordinator observed, when known.
type endpoints struct {
	port func() uint16

	mu       sync.Mutex
	observed netip.AddrPort

	// pub serializes publications and is held across each request, so
	// the coordinator takes them in order and the last one it takes
	// carries the newest list.
	pub sync.Mutex
}

// publish sends the current list to the coordinator, after any
// publication already under way.
func (e *endpoints) publish(ctx context.Context, c *coordclient.Client) error {
	e.pub.Lock()
	defer e.pub.Unlock()
	return c.PublishEndpoints(ctx, e.list())
}

// stale reports whether published, the list a map stream opened with,
// differs from the current one.
func (e *endpoints) stale(published []netip.AddrPort) bool {
	return !slices.Equal(published, e.list())
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
// port on each non-loopback interface address, and on loopback.
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
