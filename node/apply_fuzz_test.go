package node

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/clustral/clustral/proto"
)

// applyOnlyNode is a Node without a WireGuard device: UAPI sets are
// accepted and dropped. It is for exercising Apply and the view alone.
func applyOnlyNode(t testing.TB, priv proto.Key) *Node {
	t.Helper()
	b := NewBind()
	if err := b.setKey(priv); err != nil {
		t.Fatal(err)
	}
	return &Node{
		logger:    slog.New(slog.DiscardHandler),
		bind:      b,
		pub:       proto.Key(wgtypes.Key(priv).PublicKey()),
		addedAt:   make(map[proto.Key]uint64),
		ipcSet:    func(string) error { return nil },
		peers:     make(map[proto.Key]*proto.Peer),
		byAddr:    make(map[netip.Addr]*proto.Peer),
		byCluster: make(map[string]map[proto.Key]*proto.Peer),
		subs:      make(map[int]func(Change)),
		// Far beyond any fuzz run: the delayed keepalive never fires.
		lazyKeepalive: 1 << 62,
	}
}

// viewOf is a comparable copy of n's view.
type viewOf struct {
	version uint64
	synced  bool
	peers   map[proto.Key]proto.Peer
	cert    string
}

func snapshotView(n *Node) viewOf {
	n.mu.RLock()
	defer n.mu.RUnlock()
	v := viewOf{version: n.version, synced: n.synced, peers: map[proto.Key]proto.Peer{}, cert: n.cert}
	for k, p := range n.peers {
		v.peers[k] = *p
	}
	return v
}

// checkView fails unless n's indexes agree with its peers and no address
// belongs to two peers or to this node's own key.
func checkView(n *Node) error {
	n.mu.RLock()
	defer n.mu.RUnlock()
	owner := map[netip.Addr]proto.Key{}
	for k, p := range n.peers {
		if k != p.Key {
			return fmt.Errorf("peer %s filed under %s", p.Key.ShortString(), k.ShortString())
		}
		if k == n.pub {
			return fmt.Errorf("own key %s among the peers", k.ShortString())
		}
		for _, a := range p.Addresses {
			addr := a.Addr().Unmap()
			if o, dup := owner[addr]; dup && o != k {
				return fmt.Errorf("address %s belongs to %s and %s", addr, o.ShortString(), k.ShortString())
			}
			owner[addr] = k
			if n.byAddr[addr] != p {
				return fmt.Errorf("address %s of %s not indexed to it", addr, k.ShortString())
			}
		}
		if p.Kind == proto.KindAgent && p.Cluster != "" && n.byCluster[p.Cluster][k] != p {
			return fmt.Errorf("agent %s not indexed under cluster %q", k.ShortString(), p.Cluster)
		}
	}
	for addr, p := range n.byAddr {
		if owner[addr] != p.Key || n.peers[p.Key] != p {
			return fmt.Errorf("stale address index %s → %s", addr, p.Key.ShortString())
		}
	}
	for cl, m := range n.byCluster {
		for k, p := range m {
			if n.peers[k] != p || p.Cluster != cl {
				return fmt.Errorf("stale cluster index %q → %s", cl, k.ShortString())
			}
		}
	}
	return nil
}

// FuzzApply applies a map stream (newline-delimited MapMessages, as the
// coordinator sends them) to a node. Apply never panics; a message it
// refuses changes nothing; and whatever it accepts, no address is ever
// held by two peers and the node's indexes match its peers.
func FuzzApply(f *testing.F) {
	self := proto.Key(wgtypes.Key(fuzzSelfPriv).PublicKey())
	key := func(i byte) proto.Key { return proto.Key(wgtypes.Key{i, 1}.PublicKey()) }
	peer := func(i byte, addrs ...string) proto.Peer {
		p := proto.Peer{Key: key(i), NodeID: fmt.Sprint("n", i), Kind: proto.KindAgent, Cluster: "prod", Online: true}
		for _, a := range addrs {
			p.Addresses = append(p.Addresses, netip.MustParsePrefix(a))
		}
		return p
	}
	selfPeer := proto.Peer{Key: self, Kind: proto.KindDevice, Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")}}
	stream := func(msgs ...proto.MapMessage) []byte {
		var b bytes.Buffer
		for _, m := range msgs {
			json.NewEncoder(&b).Encode(m)
		}
		return b.Bytes()
	}
	snap := proto.MapMessage{Version: 1, Snapshot: true, Self: &selfPeer, MeshDomain: "clustral.internal", CABundle: "PEM",
		Peers: []proto.Peer{peer(2, "100.64.0.2/32", "fd00::2/128"), peer(3, "100.64.0.3/32")}}
	for _, s := range [][]byte{
		stream(snap),
		stream(snap, proto.MapMessage{Version: 2, Peers: []proto.Peer{peer(4, "100.64.0.2/32")}}), // conflict
		stream(snap, proto.MapMessage{Version: 2, Peers: []proto.Peer{peer(4, "100.64.0.2/32")}, Removed: []proto.Key{key(2)}}),
		stream(snap, proto.MapMessage{Version: 2, Peers: []proto.Peer{peer(2, "100.64.0.9/32"), peer(3, "100.64.0.2/32")}}), // swap
		stream(snap, proto.MapMessage{Version: 3, Removed: []proto.Key{key(3)}}),                                            // gap
		stream(proto.MapMessage{Version: 5, Peers: []proto.Peer{peer(2, "100.64.0.2/32")}}),                                 // no snapshot
		stream(snap, proto.MapMessage{Version: 2, Peers: []proto.Peer{peer(5, "100.64.0.5/32"), peer(6, "100.64.0.5/32")}}),
		stream(snap, proto.MapMessage{Version: 2, Peers: []proto.Peer{selfPeer}}),
		stream(snap, proto.MapMessage{Version: 2, Peers: []proto.Peer{peer(2, "::ffff:100.64.0.3/128")}}),
		stream(snap, proto.MapMessage{Version: 2, Certificate: "CERT"}, proto.MapMessage{Version: 3, KeepAlive: true}),
		stream(snap, proto.MapMessage{Version: 2, Peers: []proto.Peer{peer(7, "0.0.0.0/0")}}),
		[]byte("{\"version\":1,\"snapshot\":true,\"peers\":[{\"key\":\"AAAA\"}]}\n{}\n"),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		n := applyOnlyNode(t, fuzzSelfPriv)
		for _, line := range bytes.Split(data, []byte("\n")) {
			var msg proto.MapMessage
			if json.Unmarshal(line, &msg) != nil {
				continue
			}
			before := snapshotView(n)
			if err := n.Apply(msg); err != nil {
				if after := snapshotView(n); !reflect.DeepEqual(before, after) {
					t.Fatalf("refused message %s changed the view", line)
				}
			}
			if err := checkView(n); err != nil {
				t.Fatalf("after %s: %v", line, err)
			}
		}
	})
}
