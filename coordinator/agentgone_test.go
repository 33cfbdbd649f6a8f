package coordinator

import (
	"slices"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

// TestAgentLeavesMapsWhenItsStreamEnds: an agent whose map stream ends
// (killed, or cut off) is marked offline at once and leaves its users'
// devices' maps AgentGrace later, so they stop dialing it; when its stream
// opens again it is back, online.
func TestAgentLeavesMapsWhenItsStreamEnds(t *testing.T) {
	e := newTestEnvWith(t, func(c *Config) { c.AgentGrace = 100 * time.Millisecond })
	m := newRelayMesh(e) // an agent of prod, and a device of alice, who may reach it
	agentKey := m.agentKey

	am := e.openMap(m.agent.NodeToken)
	am.next()
	dm := e.openMap(m.alice.NodeToken)
	type agentState int
	const (
		absent agentState = iota
		offline
		online
	)
	// waitAgent reads the device's map until the agent is in want.
	view := map[proto.Key]proto.Peer{}
	waitAgent := func(want agentState, what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			p, ok := view[agentKey]
			got := absent
			switch {
			case ok && p.Online:
				got = online
			case ok:
				got = offline
			}
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the device's map never got there (agent %v)", what, got)
			}
			m := dm.next()
			if m.Snapshot {
				clear(view)
			}
			for _, p := range m.Peers {
				view[p.Key] = p
			}
			for _, k := range m.Removed {
				delete(view, k)
			}
		}
	}
	waitAgent(online, "agent streaming")

	am.body.Close()
	waitAgent(offline, "agent's stream closed")
	waitAgent(absent, "agent's stream closed for AgentGrace")

	// A device that connects now does not get it either.
	var dev2 proto.RegisterResponse
	e.must("POST", "/api/v1/devices", e.login("alice@example.com").Token, proto.RegisterDeviceRequest{PublicKey: newKey(t), Hostname: "laptop-2"}, &dev2)
	if snap := e.openMap(dev2.NodeToken).next(); slices.ContainsFunc(snap.Peers, func(p proto.Peer) bool { return p.Key == agentKey }) {
		t.Errorf("a new device's snapshot has the gone agent: %+v", snap.Peers)
	}

	e.openMap(m.agent.NodeToken).next()
	waitAgent(online, "agent's stream open again")
}
