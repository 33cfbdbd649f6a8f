package socks5_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/netip"
	"strings"

	"github.com/clustral/clustral/netstack"
	"github.com/clustral/clustral/netstack/socks5"
)

// This is how a node serves kubectl: mesh names resolve to an agent's
// overlay address and the connection goes through the netstack.
func Example() {
	stack, err := netstack.New(netstack.Config{Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.7")}})
	if err != nil {
		log.Fatal(err)
	}
	defer stack.Close()
	agents := map[string]netip.Addr{"prod": netip.MustParseAddr("100.64.0.2")}

	srv := &socks5.Server{
		Username: "clustral",
		Password: "per-session-secret",
		Dial: func(ctx context.Context, network, host string, port uint16) (net.Conn, error) {
			cluster, ok := strings.CutSuffix(host, ".clustral.internal")
			if !ok {
				return nil, fmt.Errorf("%s is not a mesh name: %w", host, socks5.ErrNotAllowed)
			}
			addr, ok := agents[cluster]
			if !ok {
				return nil, fmt.Errorf("no agent for cluster %s: %w", cluster, socks5.ErrHostUnreachable)
			}
			return stack.DialTCPAddrPort(ctx, netip.AddrPortFrom(addr, port))
		},
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()
	// kubeconfig: proxy-url: socks5://clustral:per-session-secret@<l.Addr()>
}
