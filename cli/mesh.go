package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/clustral/clustral/netstack"
	"github.com/clustral/clustral/netstack/socks5"
	"github.com/clustral/clustral/node"
	"github.com/clustral/clustral/proto"
)

// mesh is a node joined to the overlay: a netstack with the node's overlay
// addresses and a WireGuard node on it, kept in step with the map.
type mesh struct {
	stack *netstack.Stack // nil in TUN mode
	node  *node.Node
	reg   proto.RegisterResponse
	log   *slog.Logger

	connsMu sync.Mutex
	conns   map[proto.Key]map[*peerConn]struct{} // dialled by dialCluster, by peer
}

// tunName is the TUN device of clustral up --tun.
const tunName = "clustral0"

// joinMesh brings up the WireGuard node for a registered node: on a
// userspace netstack, or with tunMode on a TUN device that routes the
// mesh's prefixes, so any program reaches overlay addresses. Close
// releases it.
func joinMesh(priv wgtypes.Key, reg proto.RegisterResponse, listenPort int, tunMode bool, log *slog.Logger) (*mesh, error) {
	m := &mesh{reg: reg, log: log, conns: map[proto.Key]map[*peerConn]struct{}{}}
	var dev tun.Device
	if tunMode {
		var err error
		if dev, err = openTUN(tunName, netstack.DefaultMTU, reg.Addresses, reg.Prefixes); err != nil {
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
		m.stack, dev = st, st.TUN()
	}
	n, err := node.New(node.Config{PrivateKey: priv, TUN: dev, ListenPort: listenPort, Logger: log, Relay: true})
	if err != nil {
		return nil, fmt.Errorf("wireguard node: %w", err)
	}
	m.node = n
	n.OnChange(m.closeRemoved)
	return m, nil
}

// dial opens a TCP connection to an overlay address: through the netstack,
// or through the kernel and the TUN device.
func (m *mesh) dial(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
	if m.stack != nil {
		return m.stack.DialTCPAddrPort(ctx, ap)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", ap.String())
}

// peerConn is a connection dialled through the mesh to a peer. Close
// forgets it.
type peerConn struct {
	net.Conn
	m   *mesh
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
func (m *mesh) track(key proto.Key, addr netip.Addr, c net.Conn) net.Conn {
	pc := &peerConn{Conn: c, m: m, key: key}
	m.connsMu.Lock()
	set := m.conns[key]
	if set == nil {
		set = map[*peerConn]struct{}{}
		m.conns[key] = set
	}
	set[pc] = struct{}{}
	m.connsMu.Unlock()
	if p, ok := m.node.PeerByAddr(addr); !ok || p.Key != key {
		pc.Close() // removed while dialling
	}
	return pc
}

// closeRemoved closes the connections to peers that left the map. Their
// packets can no longer flow either way, so neither side would otherwise
// learn that the connection is gone: a client would wait forever, e.g. on
// a watch whose user just lost access.
func (m *mesh) closeRemoved(ch node.Change) {
	// Reset, rather than close, every connection to a peer that left:
	// FINs and data retried toward it would start a WireGuard handshake
	// the moment it comes back, crossing its own and stalling the pair.
	if m.stack != nil && len(ch.Removed) > 0 {
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

// Close stops the node, which closes its TUN device or netstack.
func (m *mesh) Close() error { return m.node.Close() }

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

// dialCluster dials host:port through the mesh. host is a mesh name
// (<cluster>.<mesh domain>), resolved to the cluster's agents, healthiest
// first, trying the next one when a dial fails; or an overlay address.
func (m *mesh) dialCluster(ctx context.Context, host string, port uint16) (net.Conn, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		p, ok := m.node.PeerByAddr(a)
		if !ok {
			return nil, fmt.Errorf("%s is not a peer of this node", a)
		}
		c, err := m.dial(ctx, netip.AddrPortFrom(a, port))
		if err != nil {
			return nil, err
		}
		return m.track(p.Key, a, c), nil
	}
	domain := "." + m.node.MeshDomain()
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if !strings.HasSuffix(host, domain) {
		return nil, fmt.Errorf("%s is not a mesh name (*%s)", host, domain)
	}
	cluster := strings.TrimSuffix(host, domain)
	agents := m.node.AgentsOf(cluster)
	if len(agents) == 0 {
		return nil, &noAgentError{cluster: cluster}
	}
	var lastErr error
	for _, a := range agents {
		if len(a.Addresses) == 0 {
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		c, err := m.dial(dctx, netip.AddrPortFrom(a.Addresses[0].Addr(), port))
		cancel()
		if err == nil {
			return m.track(a.Key, a.Addresses[0].Addr(), c), nil
		}
		m.log.Warn("agent unreachable, trying the next", "cluster", cluster, "agent", a.NodeID, "err", err)
		lastErr = err
	}
	return nil, fmt.Errorf("no agent of cluster %q answered: %w", cluster, lastErr)
}

// noAgentError reports that this device's map has no agent of a cluster:
// the user may not reach it now.
type noAgentError struct{ cluster string }

func (e *noAgentError) Error() string {
	return fmt.Sprintf("no agent of cluster %q is reachable: you may have no role there, or its agents are down", e.cluster)
}

// newSOCKSServer returns the loopback SOCKS5 server of `clustral up`: one
// per-session credential, and every CONNECT dialled through the mesh. A
// connection to a cluster the user may not reach goes to deny, if set,
// which answers kubectl with a plain-text 403 saying so.
func newSOCKSServer(user, pass string, m *mesh, deny func(cluster string) net.Conn, log *slog.Logger) *socks5.Server {
	return &socks5.Server{
		Username: user,
		Password: pass,
		Logger:   log,
		Dial: func(ctx context.Context, network, host string, port uint16) (net.Conn, error) {
			c, err := m.dialCluster(ctx, host, port)
			var na *noAgentError
			if errors.As(err, &na) && deny != nil {
				return deny(na.cluster), nil
			}
			return c, err
		},
	}
}

// runMapStream keeps m in step with the coordinator until ctx is done,
// publishing the node's local endpoints and the public one the
// coordinator's discovery service observes, and holds the relay open.
func runMapStream(ctx context.Context, m *mesh, api *apiClient, log *slog.Logger) error {
	eps := &endpoints{port: m.node.ListenPort}
	go runRelay(ctx, m, api, log)
	if m.reg.STUN != "" {
		go runDiscovery(ctx, m, api, m.reg.STUN, eps, log)
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
