package mesh

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/netstack"
	"github.com/clustral/clustral/node"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// TestSpoofedSourceDropped (invariant 2 of docs/design.md): bob registers a device of
// his own, then sends from alice's overlay address. The agent's WireGuard
// peer for bob allows only bob's addresses, so the packets are dropped and
// the connection never opens; from his own address the same node reaches
// the agent and is seen as bob.
func TestSpoofedSourceDropped(t *testing.T) {
	_, a, b := newAliceAndBob(t, "viewer", "viewer")
	a.MustUp() // alice's device holds the address bob will claim

	var devices []proto.Device
	a.MustAPI("GET", "/api/v1/devices", nil, &devices)
	if len(devices) != 1 {
		t.Fatalf("alice's devices = %+v", devices)
	}
	aliceAddr := devices[0].Addresses[0].Addr()

	// bob's own node, registered through the API with his session.
	priv := testkit.WireGuardKey(t)
	var reg proto.RegisterResponse
	b.MustAPI("POST", "/api/v1/devices", proto.RegisterDeviceRequest{PublicKey: proto.Key(priv.PublicKey()), Hostname: "rogue"}, &reg)
	bobAddr := reg.Addresses[0].Addr()

	try := func(src netip.Addr, timeout time.Duration) (string, error) {
		t.Helper()
		st, err := netstack.New(netstack.Config{Addrs: []netip.Addr{src}, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		n, err := node.New(node.Config{PrivateKey: priv, TUN: st.TUN(), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		s, err := node.NewStream(n, node.StreamConfig{BaseURL: suite.CoordURL(), Token: reg.NodeToken,
			Endpoints: func() []netip.AddrPort {
				return []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), n.ListenPort())}
			}})
		if err != nil {
			t.Fatal(err)
		}
		go s.Run(ctx)
		harness.MustEventually(t, 10*time.Second, func(context.Context) error {
			if len(n.AgentsOf("kind")) == 0 {
				return io.ErrUnexpectedEOF
			}
			return nil
		})
		agent := n.AgentsOf("kind")[0]
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM([]byte(n.CABundle()))
		hc := &http.Client{Timeout: timeout, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return st.DialTCPAddrPort(ctx, netip.AddrPortFrom(agent.Addresses[0].Addr(), 443))
			},
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "kind.clustral.internal"},
		}}
		defer hc.CloseIdleConnections()
		req, _ := http.NewRequest("POST", "https://kind.clustral.internal/apis/authentication.k8s.io/v1/selfsubjectreviews",
			strings.NewReader(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body), nil
	}

	if body, err := try(aliceAddr, 8*time.Second); err == nil {
		t.Fatalf("a request from alice's address over bob's key got through: %s", body)
	}
	body, err := try(bobAddr, 20*time.Second)
	if err != nil {
		t.Fatalf("from his own address: %v", err)
	}
	if !strings.Contains(body, `"username":"bob@example.com"`) {
		t.Fatalf("from his own address bob is seen as: %s", body)
	}
}
