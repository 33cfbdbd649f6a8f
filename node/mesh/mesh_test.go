package mesh

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

func TestSanitizeHostname(t *testing.T) {
	tests := []struct{ in, want string }{
		{"laptop-7.example.com", "laptop-7.example.com"},
		{"Alice's MacBook Pro", "AlicesMacBookPro"},
		{"", "device"},
		{"ünïcödé", "ncd"},
		{"%%%", "device"},
		{strings.Repeat("a", 100), strings.Repeat("a", 63)},
	}
	for _, tt := range tests {
		if got := sanitizeHostname(tt.in); got != tt.want {
			t.Errorf("sanitizeHostname(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestResolveUDP(t *testing.T) {
	tests := []struct {
		in      string
		want    netip.AddrPort
		wantErr string
	}{
		{"203.0.113.7:3478", netip.MustParseAddrPort("203.0.113.7:3478"), ""},
		{"[::ffff:203.0.113.7]:3478", netip.MustParseAddrPort("203.0.113.7:3478"), ""},
		{"203.0.113.7", netip.AddrPort{}, `discovery address "203.0.113.7"`},
		{"203.0.113.7:99999", netip.AddrPort{}, "bad port"},
		{"203.0.113.7:stun", netip.AddrPort{}, "bad port"},
	}
	for _, tt := range tests {
		got, err := resolveUDP(context.Background(), tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("resolveUDP(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("resolveUDP(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

// TestEndpointsObservedFirst: the observed public endpoint leads the
// list once known, and setObserved reports only changes.
func TestEndpointsObservedFirst(t *testing.T) {
	e := &endpoints{port: func() uint16 { return 51820 }}
	obs := netip.MustParseAddrPort("203.0.113.7:40000")
	for _, ep := range e.list() {
		if ep.Port() != 51820 {
			t.Fatalf("local endpoint %v not on the listen port", ep)
		}
	}
	if !e.setObserved(obs) {
		t.Fatal("first observation not reported as a change")
	}
	if e.setObserved(obs) {
		t.Fatal("the same observation reported as a change")
	}
	if got := e.list(); len(got) == 0 || got[0] != obs {
		t.Fatalf("list() = %v, want %v first", got, obs)
	}
}

// TestEndpointsStale: a map stream that opened with a list other than the
// current one (discovery found the public endpoint meanwhile, or lost it)
// must publish again; one that opened with the current list need not.
func TestEndpointsStale(t *testing.T) {
	e := &endpoints{port: func() uint16 { return 51820 }}
	local := e.list()
	obs := netip.MustParseAddrPort("203.0.113.7:40000")
	e.setObserved(obs)
	withObs := e.list()
	for _, tt := range []struct {
		name      string
		published []netip.AddrPort
		want      bool
	}{
		{"opened before discovery", local, true},
		{"opened with the current list", withObs, false},
		{"opened with nothing", nil, true},
		{"opened with another public endpoint", append([]netip.AddrPort{netip.MustParseAddrPort("198.51.100.1:1")}, local...), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := e.stale(tt.published); got != tt.want {
				t.Errorf("stale(%v) = %v with current %v, want %v", tt.published, got, withObs, tt.want)
			}
		})
	}
}

// TestResolve: a mesh name means the agents of its cluster in the current
// map, whatever its case or final dot; a name outside the mesh domain and
// a cluster without agents are typed errors, and a cluster whose agents
// leave the map stops resolving.
func TestResolve(t *testing.T) {
	priv := testkit.WireGuardKey(t)
	self := netip.MustParsePrefix("100.64.0.1/32")
	m, err := Join(Config{PrivateKey: priv, Registration: proto.RegisterResponse{Addresses: []netip.Prefix{self}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	agent := func(i byte, cluster, addr string) proto.Peer {
		return proto.Peer{Key: proto.Key(wgtypes.Key{1, i}.PublicKey()), NodeID: fmt.Sprint("a", i), Kind: proto.KindAgent,
			Cluster: cluster, Online: true, Addresses: []netip.Prefix{netip.MustParsePrefix(addr)}}
	}
	selfPeer := proto.Peer{Key: proto.Key(priv.PublicKey()), Kind: proto.KindDevice, Addresses: []netip.Prefix{self}}
	if err := m.Node.Apply(proto.MapMessage{Version: 1, Snapshot: true, Self: &selfPeer, MeshDomain: "clustral.internal",
		Peers: []proto.Peer{agent(2, "prod", "100.64.0.2/32"), agent(3, "dev", "100.64.0.3/32")}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host        string
		wantCluster string
		wantAgent   string
		wantErr     any
	}{
		{"prod.clustral.internal", "prod", "a2", nil},
		{"PROD.Clustral.Internal.", "prod", "a2", nil},
		{"dev.clustral.internal", "dev", "a3", nil},
		{"staging.clustral.internal", "staging", "", new(*NoAgentError)},
		{"x.prod.clustral.internal", "x.prod", "", new(*NoAgentError)},
		{"clustral.internal", "", "", new(*NotMeshNameError)},
		{".clustral.internal", "", "", new(*NotMeshNameError)},
		{"prod.example.com", "", "", new(*NotMeshNameError)},
		{"prodclustral.internal", "", "", new(*NotMeshNameError)},
	}
	for _, tt := range tests {
		cluster, agents, err := m.Resolve(tt.host)
		if tt.wantErr != nil {
			if !errors.As(err, tt.wantErr) {
				t.Errorf("Resolve(%q) error = %v, want %T", tt.host, err, tt.wantErr)
			}
			continue
		}
		if err != nil || cluster != tt.wantCluster || len(agents) != 1 || agents[0].NodeID != tt.wantAgent {
			t.Errorf("Resolve(%q) = %q, %v, %v; want %q and agent %s", tt.host, cluster, agents, err, tt.wantCluster, tt.wantAgent)
		}
	}

	// The agents of prod leave the map: its name no longer resolves.
	if err := m.Node.Apply(proto.MapMessage{Version: 2, Removed: []proto.Key{agent(2, "", "100.64.0.2/32").Key}}); err != nil {
		t.Fatal(err)
	}
	var na *NoAgentError
	if _, _, err := m.Resolve("prod.clustral.internal"); !errors.As(err, &na) || na.Cluster != "prod" {
		t.Fatalf("Resolve after revocation = %v, want a *NoAgentError for prod", err)
	}
}
