package mesh

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// TestDialClusterDoesNotWaitForDeadAgents: an agent that no longer
// answers costs a dial at most dialStagger, not its timeout, when another
// agent of the cluster is in the map, or arrives in it while the dead one
// is being dialed (an agent replaced by a new one).
func TestDialClusterDoesNotWaitForDeadAgents(t *testing.T) {
	tests := []struct {
		name string
		// liveLater adds the live agent to the map once the dead one
		// is being dialed, and brings it online.
		liveLater bool
	}{
		{"the live agent ranks second", false},
		{"the live agent arrives while the dead one is dialed", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newTestMesh(t)
			dead := testAgent(t, 1, "a-dead", true)
			live := testAgent(t, 2, "b-live", !tt.liveLater)
			dialing := make(chan netip.Addr, 8)
			var mu sync.Mutex
			var opened []net.Conn
			t.Cleanup(func() {
				mu.Lock()
				defer mu.Unlock()
				for _, c := range opened {
					c.Close()
				}
			})
			m.dialAddr = func(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
				dialing <- ap.Addr()
				if ap.Addr() != live.Addresses[0].Addr() {
					<-ctx.Done() // dead: never answers
					return nil, ctx.Err()
				}
				c, s := net.Pipe()
				mu.Lock()
				opened = append(opened, c, s)
				mu.Unlock()
				return c, nil
			}
			self := proto.Peer{Key: m.Node.PublicKey(), Kind: proto.KindDevice, Addresses: m.reg.Addresses}
			peers := []proto.Peer{dead, live}
			if tt.liveLater {
				peers = peers[:1]
			}
			if err := m.Node.Apply(proto.MapMessage{Version: 1, Snapshot: true, Self: &self, MeshDomain: "clustral.internal", Peers: peers}); err != nil {
				t.Fatal(err)
			}

			type dialed struct {
				c   net.Conn
				err error
			}
			done := make(chan dialed, 1)
			start := time.Now()
			go func() {
				c, err := m.DialCluster(context.Background(), "prod.clustral.internal", 443)
				done <- dialed{c, err}
			}()
			if got := testkit.Recv(t, dialing, "the first dial"); got != dead.Addresses[0].Addr() {
				t.Fatalf("dialed %v first, want the dead agent, first by hostname", got)
			}
			if tt.liveLater {
				live.Online = true
				if err := m.Node.Apply(proto.MapMessage{Version: 2, Peers: []proto.Peer{live}}); err != nil {
					t.Fatal(err)
				}
			}
			d := testkit.Recv(t, done, "DialCluster")
			if d.err != nil {
				t.Fatal(d.err)
			}
			defer d.c.Close()
			if took := time.Since(start); took >= agentDialTimeout {
				t.Errorf("DialCluster took %v: it waited for the dead agent", took)
			}
			if pc, ok := d.c.(*peerConn); !ok || pc.key != live.Key {
				t.Errorf("connection to %v, want the live agent", d.c)
			}
		})
	}
}

// newTestMesh joins a mesh on a netstack, for a device at 100.64.0.1.
func newTestMesh(t *testing.T) *Mesh {
	t.Helper()
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	m, err := Join(Config{PrivateKey: priv, Registration: proto.RegisterResponse{
		Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// testAgent is an agent of cluster prod at 100.64.1.i.
func testAgent(t *testing.T, i byte, host string, online bool) proto.Peer {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return proto.Peer{
		Key: proto.Key(k.PublicKey()), NodeID: host, Kind: proto.KindAgent, Cluster: "prod", Hostname: host, Online: online,
		Addresses: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 1, i}), 32)},
	}
}
