package coordinator

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// serveReplicaLinks serves e's replica links on a loopback port until e's
// server closes, and returns the port's address.
func serveReplicaLinks(e *testEnv) string {
	e.t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.srv.ServeReplicas(l, "") }()
	e.t.Cleanup(func() {
		e.srv.Close()
		if err := <-done; err != nil {
			e.t.Errorf("ServeReplicas: %v", err)
		}
	})
	return l.Addr().String()
}

// relayUntil sends pkt from p to dst until to receives it, as a node's
// WireGuard retries, and fails the test if that takes over 5 s: the
// other replicas learn of an attachment a moment after it happens.
func relayUntil(t *testing.T, from, to *relayPeer, dst, wantSrc proto.Key, pkt string) {
	t.Helper()
	testkit.WaitFor(t, "a relayed datagram to cross replicas", func() bool {
		from.send(dst, []byte(pkt))
		src, got, ok := to.recv(100 * time.Millisecond)
		if ok && (src != wantSrc || string(got) != pkt) {
			t.Fatalf("got %q from %s, want %q from %s", got, src.ShortString(), pkt, wantSrc.ShortString())
		}
		return ok
	})
}

// TestRelayAcrossReplicas: two nodes attached to different replicas'
// relays reach each other, stamped with their own keys, and the sending
// replica's checks hold: a node that is not a peer reaches no one.
func TestRelayAcrossReplicas(t *testing.T) {
	envs := newReplicaEnvs(t, 2)
	for _, e := range envs {
		serveReplicaLinks(e)
	}
	m := newRelayMesh(envs[0])
	agent, _ := envs[1].dialRelay(m.agent.NodeToken, true)
	alice, _ := envs[0].dialRelay(m.alice.NodeToken, true)
	bob, _ := envs[0].dialRelay(m.bob.NodeToken, true)

	relayUntil(t, alice, agent, m.agentKey, m.aliceKey, "hello agent")
	relayUntil(t, agent, alice, m.aliceKey, m.agentKey, "hello alice")

	bob.send(m.agentKey, []byte("let me in"))
	agent.send(m.bobKey, []byte("psst"))
	alice.send(m.agentKey, []byte("marker"))
	for {
		_, pkt, ok := agent.recv(5 * time.Second)
		if !ok {
			t.Fatal("the marker did not cross")
		}
		if string(pkt) == "let me in" {
			t.Fatal("bob's datagram crossed replicas to an agent he may not reach")
		}
		if string(pkt) == "marker" {
			break
		}
	}
	if _, pkt, ok := bob.recv(200 * time.Millisecond); ok {
		t.Fatalf("bob got %q from a node he is not a peer of", pkt)
	}
	out, in := envs[0].srv.RelayStats(), envs[1].srv.RelayStats()
	if out.ForwardedOut == 0 || in.ForwardedIn == 0 || out.ForwardedIn == 0 || in.ForwardedOut == 0 {
		t.Errorf("forward counters: replica 0 %+v, replica 1 %+v", out, in)
	}
	for _, e := range envs {
		mfs, err := e.srv.Metrics().Gather()
		if err != nil {
			t.Fatal(err)
		}
		directions := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() == "clustral_coordinator_relay_replica_packets_total" {
				for _, m := range mf.GetMetric() {
					directions[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
		if directions["in"] == 0 || directions["out"] == 0 {
			t.Errorf("clustral_coordinator_relay_replica_packets_total = %v, want datagrams in and out", directions)
		}
	}
	if out.DroppedNoPeer == 0 || in.DroppedNoPeer == 0 {
		t.Errorf("bob's and the agent's datagrams to each other were not counted as dropped: %+v, %+v", out, in)
	}
}

// TestReplicaLinkRefusesStrangers: the replica link endpoint takes frames
// only from a process that holds the replicas' identity from the store.
func TestReplicaLinkRefusesStrangers(t *testing.T) {
	e := newReplicaEnvs(t, 2)[1]
	addr := serveReplicaLinks(e)
	m := newRelayMesh(e)
	alice, _ := e.dialRelay(m.alice.NodeToken, true)

	own, err := e.srv.replicaIdentity()
	if err != nil {
		t.Fatal(err)
	}
	other, err := newReplicaIdentity(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := tls.X509KeyPair(other, other)
	if err != nil {
		t.Fatal(err)
	}
	noCert := replicaTLS(own).Clone()
	noCert.Certificates = nil
	tests := []struct {
		name string
		tls  *tls.Config // nil: plain TCP
		want bool
	}{
		{"plain TCP", nil, false},
		{"TLS without a client certificate", noCert, false},
		{"TLS with another identity", replicaTLS(stranger), false},
		{"a replica", replicaTLS(own), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if tt.tls != nil {
				// Against another identity the handshake itself fails;
				// either way no frame may get through.
				c := tls.Client(conn, tt.tls)
				c.Handshake()
				conn = c
			}
			pkt := []byte("from " + tt.name)
			bw := bufio.NewWriter(conn)
			bw.Write(proto.AppendRelayForward(nil, m.agentKey, m.aliceKey, pkt))
			bw.Flush()
			_, got, ok := alice.recv(500 * time.Millisecond)
			if ok != tt.want || (ok && string(got) != string(pkt)) {
				t.Fatalf("alice got %q (%v), want a datagram: %v", got, ok, tt.want)
			}
			if !tt.want {
				conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err := io.Copy(io.Discard, conn)
				if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
					t.Fatal("the endpoint kept the connection of a stranger open")
				}
			}
		})
	}
}

// TestAgentLeavesMapsAcrossReplicas: with replicas, an agent whose map
// stream (on one replica) closes leaves the maps of devices streaming
// from another after AgentGrace, and returns when its stream opens again.
func TestAgentLeavesMapsAcrossReplicas(t *testing.T) {
	envs := newReplicaEnvsWith(t, 2, func(c *Config) { c.AgentGrace = 500 * time.Millisecond })
	m := newRelayMesh(envs[0])
	dev := follow(envs[0].openMap(m.alice.NodeToken))
	has := func(want bool) func(map[proto.Key]proto.Peer) bool {
		return func(p map[proto.Key]proto.Peer) bool { _, ok := p[m.agentKey]; return ok == want }
	}
	dev.waitFor("the agent out of the map before its stream opens", has(false))
	agent := envs[1].openMap(m.agent.NodeToken)
	agent.next()
	dev.waitFor("the agent in the map once its stream opens on the other replica", has(true))
	agent.body.Close()
	agent.waitEnd("after the agent's stream closed")
	dev.waitFor("the agent out of the map after AgentGrace", has(false))
	agent = envs[1].openMap(m.agent.NodeToken)
	agent.next()
	dev.waitFor("the agent back in the map", has(true))
}
