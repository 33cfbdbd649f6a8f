package node

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/device"

	"github.com/clustral/clustral/proto"
)

// HealthyAge is how recent a peer's last handshake must be for the peer to
// count as healthy: a session keyed at that handshake is still usable.
const HealthyAge = device.RejectAfterTime

// StatusMaxAge bounds how stale the device status behind PeerStatus and
// AgentsOf may be. Reading status walks every peer of the device, so it is
// cached rather than read per lookup.
const StatusMaxAge = time.Second

// PeerStatus is the state of one peer in the WireGuard device.
type PeerStatus struct {
	Key proto.Key
	// Endpoint is the peer's current UDP endpoint as wireguard-go knows
	// it ("ip:port"), or "" when none is known yet.
	Endpoint string
	// LastHandshake is the time of the last completed handshake, zero if
	// none.
	LastHandshake time.Time
	RxBytes       uint64
	TxBytes       uint64
}

// Healthy reports whether the peer completed a handshake within HealthyAge
// of now.
func (s PeerStatus) Healthy(now time.Time) bool {
	return !s.LastHandshake.IsZero() && now.Sub(s.LastHandshake) < HealthyAge
}

// Status is a node's state, for clustral status and metrics.
type Status struct {
	PublicKey  proto.Key
	ListenPort uint16
	// Version is the last applied map version; Synced is false until a
	// snapshot is applied and after a failed Apply.
	Version uint64
	Synced  bool
	// Peers are the device's peers, ordered by key.
	Peers []PeerStatus
	// Paths are the Bind's traffic counters, indexed by Path.
	Paths [numPaths]PathStats
}

// Status reads the device's current state. It walks every peer: O(peers).
func (n *Node) Status() (Status, error) {
	peers, err := n.readStatus()
	if err != nil {
		return Status{}, err
	}
	status := Status{PublicKey: n.pub, ListenPort: n.ListenPort(), Peers: peers}
	status.Version, status.Synced = n.Version()
	for p := range numPaths {
		status.Paths[p] = n.bind.Stats(p)
	}
	return status, nil
}

// PathStatus reports the path packets to the peer with key take now, and
// its probe round trip. It reports false for a peer the node has no
// endpoint for.
func (n *Node) PathStatus(key proto.Key) (PathStatus, bool) {
	return n.bind.PathStatus(key)
}

// Bind returns the node's packet transport, for endpoint discovery
// (Bind.Discover) and path counters.
func (n *Node) Bind() *Bind { return n.bind }

// PeerStatus returns the device state of one peer, at most StatusMaxAge
// old. It reports false for a key that is not in the map.
func (n *Node) PeerStatus(key proto.Key) (PeerStatus, bool) {
	if _, ok := n.Peer(key); !ok {
		return PeerStatus{}, false
	}
	ps := n.cachedStatus()[key]
	ps.Key = key
	return ps, true
}

// cachedStatus returns the device status by key, read at most StatusMaxAge
// ago. The map must not be modified.
func (n *Node) cachedStatus() map[proto.Key]PeerStatus {
	n.statusMu.Lock()
	defer n.statusMu.Unlock()
	if n.status != nil && time.Since(n.statusAt) < StatusMaxAge {
		return n.status
	}
	peers, err := n.readStatus()
	if err != nil {
		n.logger.Warn("read WireGuard status", "err", err)
		return n.status // stale, or nil: every peer unhealthy
	}
	m := make(map[proto.Key]PeerStatus, len(peers))
	for _, p := range peers {
		m[p.Key] = p
	}
	n.status, n.statusAt = m, time.Now()
	return m
}

func (n *Node) readStatus() ([]PeerStatus, error) {
	// The dump starts with the private key; it is parsed and dropped here
	// and never logged.
	dump, err := n.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("read WireGuard status: %w", err)
	}
	return parseStatus(dump)
}

// parseStatus parses the peers of a UAPI "get" dump, ordered by key.
func parseStatus(dump string) ([]PeerStatus, error) {
	var (
		out       []PeerStatus
		cur       *PeerStatus
		sec, nsec int64
	)
	flush := func() {
		if cur != nil && (sec != 0 || nsec != 0) {
			cur.LastHandshake = time.Unix(sec, nsec)
		}
	}
	sc := bufio.NewScanner(strings.NewReader(dump))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		if k == "public_key" {
			flush()
			key, err := parseHexKey(v)
			if err != nil {
				return nil, err
			}
			out = append(out, PeerStatus{Key: key})
			cur, sec, nsec = &out[len(out)-1], 0, 0
			continue
		}
		if cur == nil {
			continue // device lines, including private_key
		}
		var err error
		switch k {
		case "endpoint":
			cur.Endpoint = v
		case "last_handshake_time_sec":
			sec, err = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, err = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			cur.RxBytes, err = strconv.ParseUint(v, 10, 64)
		case "tx_bytes":
			cur.TxBytes, err = strconv.ParseUint(v, 10, 64)
		}
		if err != nil {
			return nil, fmt.Errorf("parse WireGuard status line %s: %w", k, err)
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parse WireGuard status: %w", err)
	}
	slices.SortFunc(out, func(a, b PeerStatus) int { return bytes.Compare(a.Key[:], b.Key[:]) })
	return out, nil
}

func parseHexKey(s string) (proto.Key, error) {
	var k proto.Key
	if hex.DecodedLen(len(s)) != len(k) {
		return k, fmt.Errorf("parse WireGuard status: bad key length %d", len(s))
	}
	if _, err := hex.Decode(k[:], []byte(s)); err != nil {
		return k, fmt.Errorf("parse WireGuard status: bad key: %w", err)
	}
	return k, nil
}
