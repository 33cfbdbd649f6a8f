package agent_test

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/netip"

	"k8s.io/client-go/rest"

	"github.com/clustral/clustral/agent"
	"github.com/clustral/clustral/proto"
)

// staticPeers stands in for the node's network map.
type staticPeers map[netip.Addr]proto.Peer

func (m staticPeers) PeerByAddr(a netip.Addr) (proto.Peer, bool) {
	p, ok := m[a]
	return p, ok
}

func Example() {
	var (
		overlay net.Listener    // the agent's overlay :443 inside the netstack
		cert    tls.Certificate // issued by the mesh CA
		peers   = staticPeers{} // the node's current map
	)
	upstream, err := rest.InClusterConfig()
	if err != nil {
		slog.Error("in-cluster config", "err", err)
		return
	}
	p, err := agent.New(agent.Config{Cluster: "prod", Upstream: upstream, Peers: peers})
	if err != nil {
		slog.Error("proxy", "err", err)
		return
	}
	defer p.Close()
	go p.ServeTLS(overlay, cert)

	// After each network map change is applied:
	p.Reevaluate()
}
