// Package mesh joins a registered node to the overlay: a WireGuard node
// (package node) on a userspace netstack or a TUN device, kept in step
// with the coordinator's map, its relay and its endpoint discovery. The
// device runtime (`clustral up`) and the agent both run one.
//
// A Mesh is made by Join and released by Close; Run keeps it in step with
// the coordinator until its context is done. The methods of a Mesh are
// safe for concurrent use.
package mesh

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/clustral/clustral/netstack"
	"github.com/clustral/clustral/node"
	"github.com/clustral/clustral/proto"
)

// TUNName is the TUN device of a mesh joined with Config.TUN.
const TUNName = "clustral0"

// Config configures Join.
type Config struct {
	// PrivateKey is the node's WireGuard key, whose public half the
	// coordinator registered.
	PrivateKey wgtypes.Key
	// Registration is the coordinator's answer to the registration: the
	// node's overlay addresses, the mesh's prefixes, the discovery
	// address.
	Registration proto.RegisterResponse
	// ListenPort is the WireGuard UDP port; 0 picks a free one.
	ListenPort int
	// TUN puts the node on the TUN device TUNName, with routes for the
	// mesh's prefixes, instead of a userspace netstack (Linux, root).
	TUN    bool
	Logger *slog.Logger
}

// Mesh is a node joined to the overlay: a netstack with the node's overlay
// addresses, or a TUN device, and a WireGuard node on it.
type Mesh struct {
	// Stack is the userspace netstack; nil in TUN mode.
	Stack *netstack.Stack
	// Node is the WireGuard node.
	Node *node.Node

	reg proto.RegisterResponse
	log *slog.Logger
	// dialAddr dials an overlay address: dial, unless a test replaces it.
	dialAddr func(context.Context, netip.AddrPort) (net.Conn, error)

	connsMu sync.Mutex
	conns   map[proto.Key]map[*peerConn]struct{} // dialled by DialCluster, by peer
}

// Join brings up the WireGuard node for a registered node: on a userspace
// netstack, or with cfg.TUN on a TUN device that routes the mesh's
// prefixes, so any program reaches overlay addresses. Close releases it.
func Join(cfg Config) (*Mesh, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := cfg.Registration
	m := &Mesh{reg: reg, log: log, conns: map[proto.Key]map[*peerConn]struct{}{}}
	m.dialAddr = m.dial
	var dev tun.Device
	if cfg.TUN {
		var err error
		if dev, err = openTUN(TUNName, netstack.DefaultMTU, reg.Addresses, reg.Prefixes); err != nil {
			return nil, err
		}
		// The kernel would accept any connection a peer in the map
		// opens toward this machine's services; let the mesh only
		// answer what this machine started.
		dev = netstack.NewReplyFilter(dev)
	} else {
		var addrs []netip.Addr
		for _, p := range reg.Addresses {
			addrs = append(addrs, p.Addr())
		}
		st, err := netstack.New(netstack.Config{Addrs: addrs, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("netstack: %w", err)
		}
		m.Stack, dev = st, st.TUN()
	}
	n, err := node.New(node.Config{PrivateKey: cfg.PrivateKey, TUN: dev, ListenPort: cfg.ListenPort, Logger: log, Relay: true})
	if err != nil {
		return nil, fmt.Errorf("wireguard node: %w", err)
	}
	m.Node = n
	n.OnChange(m.closeRemoved)
	return m, nil
}

// Close stops the node, which closes its TUN device or netstack.
func (m *Mesh) Close() error { return m.Node.Close() }

// dial opens a TCP connection to an overlay address: through the netstack,
// or through the kernel and the TUN device.
func (m *Mesh) dial(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
	if m.Stack != nil {
		return m.Stack.DialTCPAddrPort(ctx, ap)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", ap.String())
}

// peerConn is a connection dialled through the mesh to a peer. Close
// forgets it.
type peerConn struct {
	net.Conn
	m   *Mesh
	key proto.Key
}

func (c *peerConn) Close() error {
	c.m.connsMu.Lock()
	if set := c.m.conns[c.key]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(c.m.conns, c.key)
		}
	}
	c.m.connsMu.Unlock()
	return c.Conn.Close()
}

// CloseWrite half-closes the connection, so the SOCKS server can pass on
// a client's EOF.
func (c *peerConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// track registers c, dialled to peer key at addr, to be closed when the peer
// leaves the map.
func (m *Mesh) track(key proto.Key, addr netip.Addr, c net.Conn) net.Conn {
	pc := &peerConn{Conn: c, m: m, key: key}
	m.connsMu.Lock()
	set := m.conns[key]
	if set == nil {
		set = map[*peerConn]struct{}{}
		m.conns[key] = set
	}
	set[pc] = struct{}{}
	m.connsMu.Unlock()
	if p, ok := m.Node.PeerByAddr(addr); !ok || p.Key != key {
		pc.Close() // removed while dialling
	}
	return pc
}

// closeRemoved closes the connections to peers that left the map. Their
// packets can no longer flow either way, so neither side would otherwise
// learn that the connection is gone: a client would wait forever, e.g. on
// a watch whose user just lost access.
func (m *Mesh) closeRemoved(ch node.Change) {
	// Reset, rather than close, every connection to a peer that left:
	// FINs and data retried toward it would start a WireGuard handshake
	// the moment it comes back, crossing its own and stalling the pair.
	if m.Stack != nil && len(ch.Removed) > 0 {
		var addrs []netip.Addr
		for _, p := range ch.Removed {
			for _, a := range p.Addresses {
				addrs = append(addrs, a.Addr())
			}
		}
		if n := m.Stack.AbortTCP(addrs...); n > 0 {
			m.log.Debug("reset connections to peers that left the map", "peers", len(ch.Removed), "conns", n)
		}
	}
	for _, p := range ch.Removed {
		m.connsMu.Lock()
		set := m.conns[p.Key]
		delete(m.conns, p.Key)
		m.connsMu.Unlock()
		for c := range set {
			c.Conn.Close()
		}
		if len(set) > 0 {
			m.log.Info("closed connections to a peer that left the map", "peer", p.Key.ShortString(), "conns", len(set))
		}
	}
}

// DialCluster dials host:port through the mesh. host is a mesh name
// (<cluster>.<mesh domain>), resolved by Resolve to the cluster's agents,
// healthiest first, trying the next one when a dial fails; or an overlay
// address. The connection is closed when its peer leaves the map. When the
// map has no agent of the cluster, the error is a *NoAgentError.
func (m *Mesh) DialCluster(ctx context.Context, host string, port uint16) (net.Conn, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		p, ok := m.Node.PeerByAddr(a)
		if !ok {
			return nil, fmt.Errorf("%s is not a peer of this node", a)
		}
		c, err := m.dialAddr(ctx, netip.AddrPortFrom(a, port))
		if err != nil {
			return nil, err
		}
		return m.track(p.Key, a, c), nil
	}
	cluster, _, err := m.Resolve(host)
	if err != nil {
		return nil, err
	}
	return m.dialAgents(ctx, cluster, port)
}

const (
	// agentDialTimeout bounds one dial to one agent.
	agentDialTimeout = 3 * time.Second
	// dialStagger is how long DialCluster waits for an agent to answer
	// before it dials the next best one too.
	dialStagger = 250 * time.Millisecond
)

// dialAgents dials port on the agents of cluster and returns the first
// connection made. It starts with the best agent (AgentsOf); while none
// has answered it dials the next best too, each dialStagger, at once when
// a dial fails, and at once when the map changes, so an agent that arrives
// or comes online meanwhile (one replacing a dead agent) is dialed as soon
// as the map has it, not after the dead agent's timeout. The other dials
// are cancelled and their connections closed before it returns.
func (m *Mesh) dialAgents(ctx context.Context, cluster string, port uint16) (net.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// changed signals that the map gained an agent of the cluster, or
	// one came online.
	changed := make(chan struct{}, 1)
	defer m.Node.OnChange(func(c node.Change) {
		news := slices.ContainsFunc(c.Added, func(p proto.Peer) bool { return p.Cluster == cluster }) ||
			slices.ContainsFunc(c.Updated, func(u node.PeerUpdate) bool {
				return u.New.Cluster == cluster && u.New.Online && !u.Old.Online
			})
		if news {
			select {
			case changed <- struct{}{}:
			default:
			}
		}
	})()

	type result struct {
		agent proto.Peer
		addr  netip.Addr
		conn  net.Conn
		err   error
	}
	results := make(chan result)
	var wg sync.WaitGroup
	running := 0
	// Whatever returns, the dials still running end (cancel) and their
	// connections are closed.
	defer func() {
		cancel()
		go func() {
			wg.Wait()
			close(results)
		}()
		for r := range results {
			if r.conn != nil {
				r.conn.Close()
			}
		}
	}()
	// tried holds the agents dialed, and whether each was online then:
	// one that comes online later (its map stream opened, so it knows
	// this node now) is dialed again.
	tried := map[proto.Key]bool{}
	// next dials the best agent not tried yet and reports whether there
	// was one.
	next := func() bool {
		for _, a := range m.Node.AgentsOf(cluster) {
			if online, ok := tried[a.Key]; ok && (online || !a.Online) || len(a.Addresses) == 0 {
				continue
			}
			tried[a.Key] = a.Online
			running++
			addr := a.Addresses[0].Addr()
			wg.Go(func() {
				dctx, dcancel := context.WithTimeout(ctx, agentDialTimeout)
				c, err := m.dialAddr(dctx, netip.AddrPortFrom(addr, port))
				dcancel()
				results <- result{a, addr, c, err}
			})
			return true
		}
		return false
	}
	stagger := time.NewTicker(dialStagger)
	defer stagger.Stop()
	next()
	var lastErr error
	for {
		if running == 0 && !next() {
			if lastErr == nil {
				return nil, &NoAgentError{Cluster: cluster}
			}
			return nil, fmt.Errorf("no agent of cluster %q answered: %w", cluster, lastErr)
		}
		select {
		case r := <-results:
			running--
			if r.err == nil {
				return m.track(r.agent.Key, r.addr, r.conn), nil
			}
			m.log.Warn("agent unreachable, trying the next", "cluster", cluster, "agent", r.agent.NodeID, "err", r.err)
			lastErr = r.err
			next()
		case <-stagger.C:
			next()
		case <-changed:
			next()
		case <-ctx.Done():
			return nil, fmt.Errorf("dial cluster %q: %w", cluster, ctx.Err())
		}
	}
}

// Resolve is the one meaning of a mesh name, shared by DialCluster (the
// SOCKS5 proxy) and the mesh DNS of `clustral up --tun`: host, in any
// case and with or without a final dot, must be <cluster>.<mesh domain>,
// the name the coordinator puts in the serving certificate of each agent
// of the cluster. Resolve returns the cluster and its agents in the
// current map, best first (node.AgentsOf). A name outside the mesh
// domain is a *NotMeshNameError; a cluster with no agent in the map, the
// user's view of a cluster they may not reach now, a *NoAgentError.
func (m *Mesh) Resolve(host string) (cluster string, agents []proto.Peer, err error) {
	domain := strings.ToLower(m.Node.MeshDomain())
	name := strings.TrimSuffix(strings.ToLower(host), ".")
	cluster, ok := strings.CutSuffix(name, "."+domain)
	if !ok || domain == "" || cluster == "" {
		return "", nil, &NotMeshNameError{Name: host, Domain: domain}
	}
	if agents = m.Node.AgentsOf(cluster); len(agents) == 0 {
		return cluster, nil, &NoAgentError{Cluster: cluster}
	}
	return cluster, agents, nil
}

// NotMeshNameError reports a name outside the mesh domain.
type NotMeshNameError struct{ Name, Domain string }

func (e *NotMeshNameError) Error() string {
	return fmt.Sprintf("%s is not a mesh name (<cluster>.%s)", e.Name, e.Domain)
}

// NoAgentError reports that this node's map has no agent of a cluster:
// the user may not reach it now.
type NoAgentError struct{ Cluster string }

func (e *NoAgentError) Error() string {
	return fmt.Sprintf("no agent of cluster %q is reachable: you may have no role there, or its agents are down", e.Cluster)
}

// PathView returns how packets reach a peer ("direct", "relayed", or ""
// when unknown) and the last probe round trip in milliseconds.
func (m *Mesh) PathView(key proto.Key) (string, float64) {
	st, ok := m.Node.PathStatus(key)
	if !ok {
		return "", 0
	}
	path := "direct"
	if st.Path == node.PathRelay {
		path = "relayed"
	}
	return path, float64(st.RTT.Microseconds()) / 1000
}

// Hostname returns this machine's hostname as a registration carries it:
// at most 63 letters, digits, '-', '.' and '_'; "device" if nothing is
// left.
func Hostname() string {
	h, _ := os.Hostname()
	return sanitizeHostname(h)
}

func sanitizeHostname(h string) string {
	out := []byte{}
	for i := 0; i < len(h) && len(out) < 63; i++ {
		c := h[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return "device"
	}
	return string(out)
}
