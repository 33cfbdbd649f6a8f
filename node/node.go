// Package node is the WireGuard engine shared by the CLI (clustral up) and
// the agent: a wireguard-go device on a caller-supplied tun.Device (a
// userspace netstack, or a kernel TUN), kept in step with the network map
// the coordinator streams (proto.MapMessage).
//
// A Node applies map messages with Apply; Stream feeds it from the
// coordinator. Every change reaches wireguard-go as one UAPI "set" that
// names only the peers that changed, so a delta costs O(1) in the number of
// peers. Each peer's allowed IPs are exactly its own overlay addresses
// (invariant 2 of docs/design.md): a packet from any other source address
// is dropped by wireguard-go before it reaches the tun.Device.
//
// The node keeps its own view of the map, indexed for the lookups its users
// make on every connection: PeerByAddr (the agent identifies callers by the
// overlay source address) and AgentsOf (the CLI resolves a cluster name to
// an agent).
package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/clustral/clustral/proto"
)

// DefaultPersistentKeepalive is the keepalive interval for peers with a
// known endpoint, keeping NAT mappings open.
const DefaultPersistentKeepalive = 25 * time.Second

// lazyKeepaliveDelay is how long the lazy side of a pair waits before it
// turns keepalives on for a new peer; see lazyToward.
const lazyKeepaliveDelay = 2 * time.Second

var (
	// ErrVersionGap is returned by Apply for a delta that does not follow
	// the last applied version, or that arrives before any snapshot. The
	// node's state is unchanged; the caller must fetch a new snapshot.
	ErrVersionGap = errors.New("map version gap")
	// ErrInvalidMessage is returned by Apply for a map message that breaks
	// the map's rules (bad key or address, an address claimed by two peers,
	// a Self that is not this node). The node's state is unchanged.
	ErrInvalidMessage = errors.New("invalid map message")
	// ErrClosed is returned by Apply after Close.
	ErrClosed = errors.New("node closed")
)

// Config configures a Node.
type Config struct {
	// PrivateKey is the node's WireGuard private key. Required.
	PrivateKey wgtypes.Key
	// TUN is the device the node reads and writes overlay packets on.
	// Required. New takes ownership: it is closed by Close, or by New when
	// New fails.
	TUN tun.Device
	// ListenPort is the UDP port to listen on; 0 picks a random port.
	ListenPort int
	// Logger receives the node's and wireguard-go's logs; nil means
	// slog.Default().
	Logger *slog.Logger
	// PersistentKeepalive is the keepalive interval for peers with an
	// endpoint. 0 means DefaultPersistentKeepalive; negative disables it.
	PersistentKeepalive time.Duration
	// Relay prepares the node for the coordinator's relay (RunRelay):
	// every peer gets a keyed endpoint, relay-only when the map gives it
	// no address, and the Bind alone chooses each peer's path
	// (wireguard-go does not roam peers to the source of their packets).
	Relay bool
}

// Node is a WireGuard device kept in step with the network map.
//
// All methods are safe for concurrent use. Apply calls are serialized;
// the lookups (PeerByAddr, Peer, AgentsOf, ...) never wait for wireguard-go
// and only briefly for an Apply in progress.
type Node struct {
	logger    *slog.Logger
	dev       *device.Device
	bind      *Bind
	relay     bool // Config.Relay
	pub       proto.Key
	keepalive int // seconds, 0 = off
	// lazyKeepalive delays keepalives toward the peers of lazyToward.
	lazyKeepalive time.Duration
	// addedAt numbers each peer's arrival in the map (from adds), so a
	// delayed keepalive applies only to the arrival it was planned for, not
	// to the same key removed and added again meanwhile. Guarded by
	// applyMu.
	addedAt map[proto.Key]uint64
	adds    uint64

	// ipcSet configures the device (dev.IpcSet); tests replace it.
	ipcSet func(uapi string) error

	applyMu sync.Mutex // serializes Apply and Close; guards the fields below
	closed  bool
	// dirty is set when a UAPI set failed midway: the device may differ
	// from the view, so the next snapshot reconfigures every peer.
	dirty bool
	// kind is this node's own kind, from the map's Self; under applyMu.
	kind proto.NodeKind

	mu         sync.RWMutex // guards the view; written only under applyMu
	synced     bool         // a snapshot was applied and no gap since
	version    uint64
	self       *proto.Peer
	meshDomain string
	caBundle   string
	cert       string // an agent's serving certificate, latest first
	peers      map[proto.Key]*proto.Peer
	byAddr     map[netip.Addr]*proto.Peer
	byCluster  map[string]map[proto.Key]*proto.Peer // agents only

	subMu   sync.Mutex
	subs    map[int]func(Change)
	nextSub int

	statusMu sync.Mutex
	statusAt time.Time
	status   map[proto.Key]PeerStatus
}

// New creates a Node on cfg.TUN, listening on cfg.ListenPort, with no peers.
// The node is up when New returns; Apply a snapshot to give it peers.
func New(cfg Config) (n *Node, err error) {
	if cfg.TUN == nil {
		return nil, errors.New("new node: no TUN device")
	}
	defer func() {
		if n == nil {
			cfg.TUN.Close()
		}
	}()
	if cfg.PrivateKey == (wgtypes.Key{}) {
		return nil, errors.New("new node: no private key")
	}
	if cfg.ListenPort < 0 || cfg.ListenPort > 65535 {
		return nil, fmt.Errorf("new node: listen port %d out of range", cfg.ListenPort)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	keepalive := cfg.PersistentKeepalive
	if keepalive == 0 {
		keepalive = DefaultPersistentKeepalive
	}
	keepaliveSecs := 0
	if keepalive > 0 {
		keepaliveSecs = max(1, int(keepalive/time.Second))
	}

	bind := NewBind()
	if err := bind.setKey(proto.Key(cfg.PrivateKey)); err != nil {
		return nil, err
	}
	bind.log = logger
	dev := device.NewDevice(cfg.TUN, bind, deviceLogger(logger))
	if cfg.Relay {
		// Endpoints are sticky; the Bind moves packets between paths.
		dev.DisableSomeRoamingForBrokenMobileSemantics()
	}
	conf := fmt.Sprintf("private_key=%s\nlisten_port=%d\n",
		proto.Key(cfg.PrivateKey).Hex(), cfg.ListenPort)
	if err := dev.IpcSet(conf); err != nil {
		dev.Close()
		return nil, fmt.Errorf("new node: configure device: %w", err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("new node: bring device up on port %d: %w", cfg.ListenPort, err)
	}
	n = &Node{
		logger:        logger,
		dev:           dev,
		bind:          bind,
		relay:         cfg.Relay,
		pub:           proto.Key(cfg.PrivateKey.PublicKey()),
		keepalive:     keepaliveSecs,
		lazyKeepalive: lazyKeepaliveDelay,
		addedAt:       make(map[proto.Key]uint64),
		ipcSet:        dev.IpcSet,
		peers:         make(map[proto.Key]*proto.Peer),
		byAddr:        make(map[netip.Addr]*proto.Peer),
		byCluster:     make(map[string]map[proto.Key]*proto.Peer),
		subs:          make(map[int]func(Change)),
	}
	logger.Info("node up", "key", n.pub.ShortString(), "port", bind.Port())
	return n, nil
}

func deviceLogger(l *slog.Logger) *device.Logger {
	logf := func(level slog.Level) func(string, ...any) {
		return func(format string, args ...any) {
			if l.Enabled(context.Background(), level) {
				l.Log(context.Background(), level, fmt.Sprintf(format, args...), "component", "wireguard")
			}
		}
	}
	return &device.Logger{Verbosef: logf(slog.LevelDebug), Errorf: logf(slog.LevelWarn)}
}

// Close shuts the device down and closes the TUN device and the UDP
// sockets. Later Apply calls return ErrClosed; the map view stays readable.
// Close is idempotent.
func (n *Node) Close() error {
	n.applyMu.Lock()
	defer n.applyMu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	n.dev.Close()
	return nil
}

// PublicKey returns the node's public key.
func (n *Node) PublicKey() proto.Key { return n.pub }

// ListenPort returns the UDP port the node listens on, for publishing its
// endpoints.
func (n *Node) ListenPort() uint16 { return n.bind.Port() }

// Version returns the version of the last applied map message, and whether
// the node holds a consistent map (a snapshot was applied and no Apply
// failed since).
func (n *Node) Version() (version uint64, synced bool) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.version, n.synced
}

// Self returns this node as the map describes it.
func (n *Node) Self() (proto.Peer, bool) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return peerValue(n.self)
}

// peerValue returns a copy of *p, and false if p is nil.
func peerValue(p *proto.Peer) (proto.Peer, bool) {
	if p == nil {
		return proto.Peer{}, false
	}
	return *p, true
}

// MeshDomain returns the mesh's DNS domain (e.g. "clustral.internal").
func (n *Node) MeshDomain() string {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.meshDomain
}

// CABundle returns the mesh CA bundle (PEM).
func (n *Node) CABundle() string {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.caBundle
}

// Certificate returns the serving certificate (PEM) the map last carried
// for this node, "" if none has; only agents get one. Subscribers learn of
// a new one from Change.CertificateChanged.
func (n *Node) Certificate() string {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.cert
}

// Peer returns the peer with the given key.
//
// Peers returned by the node share their slices with the node's view; the
// caller must not modify them.
func (n *Node) Peer(key proto.Key) (proto.Peer, bool) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return peerValue(n.peers[key])
}

// PeerByAddr returns the peer whose overlay address is addr. Because a
// peer's allowed IPs are exactly its overlay addresses, the peer found for
// a connection's source address is the WireGuard peer that sent it.
func (n *Node) PeerByAddr(addr netip.Addr) (proto.Peer, bool) {
	addr = addr.Unmap()
	n.mu.RLock()
	defer n.mu.RUnlock()
	return peerValue(n.byAddr[addr])
}

// Peers returns every peer, ordered by key.
func (n *Node) Peers() []proto.Peer {
	n.mu.RLock()
	out := make([]proto.Peer, 0, len(n.peers))
	for _, p := range n.peers {
		out = append(out, *p)
	}
	n.mu.RUnlock()
	slices.SortFunc(out, func(a, b proto.Peer) int { return bytes.Compare(a.Key[:], b.Key[:]) })
	return out
}

// Clusters returns the names of the clusters that have at least one agent
// in the map, sorted.
func (n *Node) Clusters() []string {
	n.mu.RLock()
	out := make([]string, 0, len(n.byCluster))
	for c := range n.byCluster {
		out = append(out, c)
	}
	n.mu.RUnlock()
	slices.Sort(out)
	return out
}

// AgentsOf returns the agents of a cluster, best first: online and healthy
// (a WireGuard handshake within HealthyAge), then online, then healthy, then
// the rest; ties ordered by hostname and key. Health comes from device
// status at most StatusMaxAge old.
func (n *Node) AgentsOf(cluster string) []proto.Peer {
	n.mu.RLock()
	m := n.byCluster[cluster]
	out := make([]proto.Peer, 0, len(m))
	for _, p := range m {
		out = append(out, *p)
	}
	n.mu.RUnlock()
	if len(out) == 0 {
		return out
	}
	statuses := n.cachedStatus()
	now := time.Now()
	rank := func(p proto.Peer) int {
		r := 3
		healthy := statuses[p.Key].Healthy(now)
		switch {
		case p.Online && healthy:
			r = 0
		case p.Online:
			r = 1
		case healthy:
			r = 2
		}
		return r
	}
	slices.SortFunc(out, func(a, b proto.Peer) int {
		if c := rank(a) - rank(b); c != 0 {
			return c
		}
		if c := strings.Compare(a.Hostname, b.Hostname); c != 0 {
			return c
		}
		return bytes.Compare(a.Key[:], b.Key[:])
	})
	return out
}

// Change describes what one Apply changed. Peers share their slices with
// the node's view; subscribers must not modify them.
type Change struct {
	Version  uint64
	Snapshot bool
	Added    []proto.Peer
	Updated  []PeerUpdate
	Removed  []proto.Peer
	// SelfChanged reports that Self, MeshDomain or CABundle changed.
	SelfChanged bool
	// CertificateChanged reports that the map carried a new serving
	// certificate for this node (see Certificate).
	CertificateChanged bool
	// EndStreams names the live sessions an administrator ended (an
	// agent's map only; see proto.MapMessage.EndStreams).
	EndStreams []string
	// ClustersAdded and ClustersRemoved name the clusters that gained their
	// first agent or lost their last one.
	ClustersAdded   []string
	ClustersRemoved []string
}

// PeerUpdate is a peer that changed: its state before and after.
type PeerUpdate struct {
	Old, New proto.Peer
}

// Empty reports whether c changes nothing.
func (c *Change) Empty() bool {
	return len(c.Added) == 0 && len(c.Updated) == 0 && len(c.Removed) == 0 && !c.SelfChanged && !c.CertificateChanged && len(c.EndStreams) == 0
}

// OnChange registers fn to be called after every Apply that changes the
// map, with the change, once the node's view already reflects it. Calls
// are made in Apply order on the goroutine calling Apply; fn must not block
// for long and must not call Apply. The returned function unregisters fn.
func (n *Node) OnChange(fn func(Change)) (remove func()) {
	n.subMu.Lock()
	defer n.subMu.Unlock()
	id := n.nextSub
	n.nextSub++
	n.subs[id] = fn
	return func() {
		n.subMu.Lock()
		defer n.subMu.Unlock()
		delete(n.subs, id)
	}
}

func (n *Node) notify(c Change) {
	n.subMu.Lock()
	fns := make([]func(Change), 0, len(n.subs))
	ids := make([]int, 0, len(n.subs))
	for id := range n.subs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		fns = append(fns, n.subs[id])
	}
	n.subMu.Unlock()
	for _, fn := range fns {
		fn(c)
	}
}

// Apply applies one map message.
//
// A snapshot replaces the whole map: peers not in it are removed, new ones
// added, changed ones updated. A delta upserts msg.Peers and removes
// msg.Removed; its Version must be the last applied version + 1, else Apply
// returns an error wrapping ErrVersionGap. A message that breaks the map's
// rules returns an error wrapping ErrInvalidMessage. In both cases nothing
// changes. KeepAlive messages are ignored.
//
// wireguard-go is configured with one UAPI set naming only the peers whose
// WireGuard configuration (overlay addresses, endpoints) changed; a peer
// whose identity alone changed is not touched. If that set fails, the node
// marks itself unsynced (the next delta gets ErrVersionGap) and the next
// snapshot reconfigures every peer.
//
// Apply keeps the slices of msg; the caller must not modify them after.
func (n *Node) Apply(msg proto.MapMessage) error {
	if msg.KeepAlive {
		return nil
	}
	n.applyMu.Lock()
	defer n.applyMu.Unlock()
	if n.closed {
		return ErrClosed
	}
	// The view is written only under applyMu, which we hold: read it
	// without mu.
	if !msg.Snapshot {
		if !n.synced {
			return fmt.Errorf("%w: delta version %d without a snapshot", ErrVersionGap, msg.Version)
		}
		if msg.Version != n.version+1 {
			return fmt.Errorf("%w: have version %d, got delta version %d", ErrVersionGap, n.version, msg.Version)
		}
	}
	switch {
	case msg.Self != nil:
		n.kind = msg.Self.Kind
	case n.self != nil:
		n.kind = n.self.Kind
	}
	p, err := n.plan(&msg)
	if err != nil {
		return fmt.Errorf("map version %d: %w", msg.Version, err)
	}
	uapi := p.uapi.String()
	if msg.Snapshot && n.dirty {
		p.lazy = p.lazy[:0]
		uapi = n.fullUAPI(&msg, &p.lazy)
	}
	if uapi != "" {
		if err := n.ipcSet(uapi); err != nil {
			n.dirty = true
			n.mu.Lock()
			n.synced = false
			n.mu.Unlock()
			return fmt.Errorf("configure WireGuard for map version %d: %w", msg.Version, err)
		}
	}
	if msg.Snapshot {
		n.dirty = false
	}
	c := n.commit(&msg, p)
	for _, r := range p.removed {
		delete(n.addedAt, r.Key)
	}
	for _, a := range p.added {
		n.adds++
		n.addedAt[a.Key] = n.adds
	}
	if len(p.lazy) > 0 {
		arrivals := make([]arrival, len(p.lazy))
		for i, k := range p.lazy {
			arrivals[i] = arrival{k, n.addedAt[k]}
		}
		time.AfterFunc(n.lazyKeepalive, func() { n.enableKeepalive(arrivals) })
	}
	for _, r := range p.removed {
		n.bind.Forget(r.Key)
	}
	if uapi != "" {
		// wireguard-go has the new peers and endpoints now: the
		// handshake initiations held since before may reach it.
		for _, a := range p.added {
			n.bind.peerReady(a.Key, !n.lazyToward(a))
		}
		n.bind.releaseHeld(time.Now(), true)
	}
	if n.logger.Enabled(context.Background(), slog.LevelDebug) {
		n.logger.Debug("map applied", "version", msg.Version, "snapshot", msg.Snapshot,
			"added", len(c.Added), "updated", len(c.Updated), "removed", len(c.Removed), "peers", len(n.peers))
	}
	if !c.Empty() {
		n.notify(c)
	}
	return nil
}

// plan is the validated effect of one message on the view.
type plan struct {
	added   []*proto.Peer
	updated [][2]*proto.Peer // old, new
	removed []*proto.Peer
	uapi    strings.Builder
	lazy    []proto.Key // peers whose keepalive waits for enableKeepalive
}

// plan validates msg against the view and computes its effect. It changes
// nothing. Called with applyMu held.
func (n *Node) plan(msg *proto.MapMessage) (*plan, error) {
	if msg.Self != nil && msg.Self.Key != n.pub {
		return nil, fmt.Errorf("%w: self key %s is not this node's key %s", ErrInvalidMessage, msg.Self.Key.ShortString(), n.pub.ShortString())
	}
	upserts := make(map[proto.Key]*proto.Peer, len(msg.Peers))
	claims := make(map[netip.Addr]proto.Key, 2*len(msg.Peers))
	for i := range msg.Peers {
		p := &msg.Peers[i]
		if err := n.validatePeer(p); err != nil {
			return nil, err
		}
		if _, dup := upserts[p.Key]; dup {
			return nil, fmt.Errorf("%w: peer %s listed twice", ErrInvalidMessage, p.Key.ShortString())
		}
		upserts[p.Key] = p
		for _, a := range p.Addresses {
			addr := a.Addr().Unmap()
			if other, dup := claims[addr]; dup && other != p.Key {
				return nil, fmt.Errorf("%w: address %s claimed by peers %s and %s", ErrInvalidMessage, addr, other.ShortString(), p.Key.ShortString())
			}
			claims[addr] = p.Key
		}
	}

	pl := new(plan)
	// Removals first, so an address can move from a removed peer to a new
	// one in the same message.
	if msg.Snapshot {
		for k, old := range n.peers {
			if _, keep := upserts[k]; !keep {
				pl.removed = append(pl.removed, old)
			}
		}
	} else {
		for _, k := range msg.Removed {
			if _, both := upserts[k]; both {
				return nil, fmt.Errorf("%w: peer %s both upserted and removed", ErrInvalidMessage, k.ShortString())
			}
			if old, ok := n.peers[k]; ok {
				pl.removed = append(pl.removed, old)
			}
		}
		// An address may only be claimed if it is free, already the
		// claimer's, or released in this message.
		for addr, k := range claims {
			owner, ok := n.byAddr[addr]
			if !ok || owner.Key == k {
				continue
			}
			if _, upserted := upserts[owner.Key]; upserted {
				continue // the owner's new addresses are in claims: it let go
			}
			if slices.Contains(msg.Removed, owner.Key) {
				continue
			}
			return nil, fmt.Errorf("%w: address %s of peer %s already belongs to peer %s", ErrInvalidMessage, addr, k.ShortString(), owner.Key.ShortString())
		}
	}
	for _, old := range pl.removed {
		fmt.Fprintf(&pl.uapi, "public_key=%s\nremove=true\n", old.Key.Hex())
	}
	for i := range msg.Peers {
		p := &msg.Peers[i]
		old, exists := n.peers[p.Key]
		switch {
		case !exists:
			pl.added = append(pl.added, p)
			n.writePeer(&pl.uapi, p, nil, true, true, &pl.lazy)
		case !reflect.DeepEqual(*old, *p):
			pl.updated = append(pl.updated, [2]*proto.Peer{old, p})
			addrs := !slices.Equal(hostPrefixes(old.Addresses), hostPrefixes(p.Addresses))
			eps := !slices.Equal(old.Endpoints, p.Endpoints)
			if addrs || eps {
				n.writePeer(&pl.uapi, p, old, addrs, eps, &pl.lazy)
			}
		}
	}
	return pl, nil
}

func (n *Node) validatePeer(p *proto.Peer) error {
	switch {
	case p.Key.IsZero():
		return fmt.Errorf("%w: peer with zero key", ErrInvalidMessage)
	case p.Key == n.pub:
		return fmt.Errorf("%w: peer list contains this node's own key", ErrInvalidMessage)
	}
	for _, a := range p.Addresses {
		if !a.IsValid() || a.Addr().IsUnspecified() {
			return fmt.Errorf("%w: peer %s: invalid address %v", ErrInvalidMessage, p.Key.ShortString(), a)
		}
	}
	for _, e := range p.Endpoints {
		if !e.IsValid() || e.Port() == 0 || e.Addr().IsUnspecified() {
			return fmt.Errorf("%w: peer %s: invalid endpoint %v", ErrInvalidMessage, p.Key.ShortString(), e)
		}
	}
	return nil
}

// hostPrefixes returns the allowed IPs of a peer: the host prefix (/32 or
// /128) of each of its addresses. Only the address of a prefix counts, so a
// peer is never granted more than its own addresses whatever the prefix
// length on the wire.
func hostPrefixes(addrs []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(addrs))
	for i, a := range addrs {
		addr := a.Addr().Unmap()
		out[i] = netip.PrefixFrom(addr, addr.BitLen())
	}
	return out
}

// lazyToward reports whether this node waits lazyKeepalive before it
// turns keepalives on, and so starts a handshake, toward the new peer p.
//
// The coordinator tells a device and an agent of each other at the same
// moment. An agent starts at once: a device that starts first (it has
// traffic) while the agent does not know it yet is dropped, and the
// agent's own handshake then completes the pair instead of WireGuard's 5 s
// retry; after `clustral up` the agent's handshake is usually done before
// the first kubectl. The device waits. Between nodes of one kind, the one
// with the smaller key goes first. Called with applyMu held.
func (n *Node) lazyToward(p *proto.Peer) bool {
	switch {
	case n.kind == proto.KindAgent && p.Kind == proto.KindDevice:
		return false
	case n.kind == proto.KindDevice && p.Kind == proto.KindAgent:
		return true
	}
	return bytes.Compare(n.pub[:], p.Key[:]) > 0
}

// writePeer writes the UAPI lines configuring p, whose previous state is
// old (nil for a peer new to the device). addrs rewrites its allowed IPs,
// eps its endpoint and keepalive.
//
// Turning keepalives on makes wireguard-go send one at once, starting a
// handshake when there is no session. For a new peer lazyToward decides
// who starts (and the Bind lets that side's initiation win a crossing,
// see handshake.go): the lazy side appends the peer to lazy,
// and enableKeepalive turns its keepalives on later, only if the peer is
// still the arrival it was planned for (Node.addedAt).
func (n *Node) writePeer(b *strings.Builder, p, old *proto.Peer, addrs, eps bool, lazy *[]proto.Key) {
	b.WriteString("public_key=")
	b.WriteString(p.Key.Hex())
	b.WriteByte('\n')
	if eps {
		ep := FormatEndpoint(p.Key, p.Endpoints)
		if ep == "" && n.relay {
			ep = p.Key.Hex() + "@" // relay-only
		}
		if ep != "" {
			b.WriteString("endpoint=")
			b.WriteString(ep)
			b.WriteByte('\n')
		}
	}
	// Every block sets the keepalive: wireguard-go carries its "turned
	// on" flag from one peer block to the next within a set, so a block
	// without the line would send a keepalive too. A peer without
	// endpoints waits to be contacted and has nothing to keep alive.
	keepalive := 0
	if len(p.Endpoints) > 0 && n.keepalive > 0 {
		turnOn := old == nil || len(old.Endpoints) == 0
		if turnOn && n.lazyToward(p) {
			*lazy = append(*lazy, p.Key)
		} else {
			keepalive = n.keepalive
		}
	}
	b.WriteString("persistent_keepalive_interval=")
	b.WriteString(strconv.Itoa(keepalive))
	b.WriteByte('\n')
	if addrs {
		b.WriteString("replace_allowed_ips=true\n")
		for _, pfx := range hostPrefixes(p.Addresses) {
			b.WriteString("allowed_ip=")
			b.WriteString(pfx.String())
			b.WriteByte('\n')
		}
	}
}

// arrival is a peer's key and the number of its arrival in the map
// (Node.addedAt).
type arrival struct {
	key proto.Key
	seq uint64
}

// enableKeepalive turns keepalives on for the peers of arrivals that are
// still in the map, with an endpoint, since that arrival. update_only
// keeps a peer removed meanwhile from coming back.
func (n *Node) enableKeepalive(arrivals []arrival) {
	n.applyMu.Lock()
	defer n.applyMu.Unlock()
	if n.closed {
		return
	}
	var b strings.Builder
	for _, a := range arrivals {
		if p, ok := n.peers[a.key]; ok && len(p.Endpoints) > 0 && n.addedAt[a.key] == a.seq {
			fmt.Fprintf(&b, "public_key=%s\nupdate_only=true\npersistent_keepalive_interval=%d\n", a.key.Hex(), n.keepalive)
		}
	}
	if b.Len() == 0 {
		return
	}
	if err := n.ipcSet(b.String()); err != nil {
		n.logger.Warn("enable keepalives", "peers", len(arrivals), "err", err)
	}
}

// fullUAPI configures every peer of a snapshot from scratch.
func (n *Node) fullUAPI(msg *proto.MapMessage, lazy *[]proto.Key) string {
	var b strings.Builder
	b.WriteString("replace_peers=true\n")
	for i := range msg.Peers {
		n.writePeer(&b, &msg.Peers[i], nil, true, true, lazy)
	}
	return b.String()
}

// commit writes a validated plan into the view and returns the change.
// Called with applyMu held.
func (n *Node) commit(msg *proto.MapMessage, pl *plan) Change {
	c := Change{Version: msg.Version, Snapshot: msg.Snapshot}
	touched := make(map[string]bool) // clusters whose agent set changed → had agents before

	n.mu.Lock()
	unindex := func(p *proto.Peer) {
		for _, a := range p.Addresses {
			addr := a.Addr().Unmap()
			if n.byAddr[addr] == p {
				delete(n.byAddr, addr)
			}
		}
		if m, ok := n.byCluster[p.Cluster]; ok && p.Kind == proto.KindAgent {
			if _, seen := touched[p.Cluster]; !seen {
				touched[p.Cluster] = true
			}
			delete(m, p.Key)
			if len(m) == 0 {
				delete(n.byCluster, p.Cluster)
			}
		}
	}
	index := func(p *proto.Peer) {
		n.peers[p.Key] = p
		for _, a := range p.Addresses {
			n.byAddr[a.Addr().Unmap()] = p
		}
		if p.Kind == proto.KindAgent && p.Cluster != "" {
			m, ok := n.byCluster[p.Cluster]
			if !ok {
				if _, seen := touched[p.Cluster]; !seen {
					touched[p.Cluster] = false
				}
				m = make(map[proto.Key]*proto.Peer)
				n.byCluster[p.Cluster] = m
			}
			m[p.Key] = p
		}
	}
	for _, p := range pl.removed {
		unindex(p)
		delete(n.peers, p.Key)
		c.Removed = append(c.Removed, *p)
	}
	for _, u := range pl.updated {
		unindex(u[0])
	}
	for _, u := range pl.updated {
		index(u[1])
		c.Updated = append(c.Updated, PeerUpdate{Old: *u[0], New: *u[1]})
	}
	for _, p := range pl.added {
		index(p)
		c.Added = append(c.Added, *p)
	}
	for cluster, hadAgents := range touched {
		_, has := n.byCluster[cluster]
		switch {
		case has && !hadAgents:
			c.ClustersAdded = append(c.ClustersAdded, cluster)
		case !has && hadAgents:
			c.ClustersRemoved = append(c.ClustersRemoved, cluster)
		}
	}
	slices.Sort(c.ClustersAdded)
	slices.Sort(c.ClustersRemoved)

	selfChanged := func(self *proto.Peer, domain, ca string) bool {
		return !reflect.DeepEqual(self, n.self) || domain != n.meshDomain || ca != n.caBundle
	}
	if msg.Snapshot {
		c.SelfChanged = selfChanged(msg.Self, msg.MeshDomain, msg.CABundle)
		n.self, n.meshDomain, n.caBundle = msg.Self, msg.MeshDomain, msg.CABundle
	} else {
		self, domain, ca := n.self, n.meshDomain, n.caBundle
		if msg.Self != nil {
			self = msg.Self
		}
		if msg.MeshDomain != "" {
			domain = msg.MeshDomain
		}
		if msg.CABundle != "" {
			ca = msg.CABundle
		}
		c.SelfChanged = selfChanged(self, domain, ca)
		n.self, n.meshDomain, n.caBundle = self, domain, ca
	}
	if msg.Certificate != "" && msg.Certificate != n.cert {
		n.cert = msg.Certificate
		c.CertificateChanged = true
	}
	c.EndStreams = msg.EndStreams
	n.version = msg.Version
	n.synced = true
	n.mu.Unlock()
	return c
}
