package agent_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

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

func ExampleNewProxy() {
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
	p, err := agent.NewProxy(agent.ProxyConfig{Cluster: "prod", Upstream: upstream, Peers: peers})
	if err != nil {
		slog.Error("proxy", "err", err)
		return
	}
	defer p.Close()
	go p.ServeTLS(overlay, cert)

	// After each network map change is applied:
	p.Reevaluate()
}

func ExampleRun() {
	upstream, err := rest.InClusterConfig()
	if err != nil {
		slog.Error("in-cluster config", "err", err)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	err = agent.Run(ctx, agent.Config{
		CoordinatorURL: "https://clustral.example.com",
		JoinToken:      os.Getenv("CLUSTRAL_JOIN_TOKEN"),
		Upstream:       upstream,
		DrainTimeout:   agent.DefaultDrainTimeout,
		AuditDir:       "/var/lib/clustral/agent-audit",
	})
	if err != nil {
		slog.Error("agent", "err", err)
	}
}
