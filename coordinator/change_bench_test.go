package coordinator

import (
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/clustral/clustral/proto"
)

// BenchmarkAssignmentChange measures what one user's assignment change
// costs the coordinator's index and map propagation (no store, no HTTP)
// with 1,000 and 10,000 other devices connected: each iteration grants a
// user with one device a role on a cluster with one agent, then revokes
// it. The other devices hold the role on another cluster with its own
// agent, and every node has a map stream queue. The cost must be flat in
// the number of other nodes (docs/design.md §5): syncPair touches only
// the user's devices and the cluster's agents.
func BenchmarkAssignmentChange(b *testing.B) {
	for _, others := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("nodes=%d", others), func(b *testing.B) {
			s := newBareServer(b)
			now := s.now()
			s.mu.Lock()
			ro := &role{ID: newID("rol"), Name: "reader", Groups: []string{"readers"}, Created: now}
			s.indexRole(ro)
			addNode := func(n *node) *node {
				rand.Read(n.Key[:])
				n.TokenHash = hashSecret(newSecret("cnt_"))
				n.Created = now
				s.indexNode(n)
				s.clients[n.ID] = newMapClient(n.ID)
				return n
			}
			var agent *node // the last cluster's
			addCluster := func(name string) *cluster {
				c := &cluster{ID: newID("cls"), Name: name, Created: now}
				s.indexCluster(c)
				agent = addNode(&node{ID: newID("agt"), Kind: proto.KindAgent, ClusterID: c.ID})
				return c
			}
			addUser := func(login string) *user {
				u := &user{ID: newID("usr"), Login: login, Created: now}
				u.Subject, u.Email = u.ID, u.Login
				s.indexUser(u)
				return u
			}
			scale, bench := addCluster("scale"), addCluster("bench")
			for i := 0; i < others; i += 100 {
				u := addUser(fmt.Sprintf("scale-%03d@example.com", i/100))
				s.indexAssignment(&assignment{ID: newID("asg"), UserID: u.ID, RoleID: ro.ID, ClusterID: scale.ID, Created: now})
				for range min(100, others-i) {
					addNode(&node{ID: newID("dev"), Kind: proto.KindDevice, UserID: u.ID})
				}
			}
			alice := addUser("alice@example.com")
			dev := addNode(&node{ID: newID("dev"), Kind: proto.KindDevice, UserID: alice.ID})
			// The grant reaches the agent's map and the device's.
			a0 := &assignment{ID: newID("asg"), UserID: alice.ID, RoleID: ro.ID, ClusterID: bench.ID, Created: now}
			s.addAssignmentAndSyncLocked(a0)
			if s.clients[agent.ID].pending[dev.Key] == nil || s.clients[dev.ID].pending[agent.Key] == nil {
				b.Fatal("a grant queued no map change for the device and the agent")
			}
			s.removeAssignmentAndSyncLocked(a0)
			if _, ok := s.clients[agent.ID].pending[dev.Key]; !ok || s.clients[agent.ID].pending[dev.Key] != nil {
				b.Fatal("a revocation queued no removal for the agent")
			}
			s.mu.Unlock()
			for b.Loop() {
				a := &assignment{ID: newID("asg"), UserID: alice.ID, RoleID: ro.ID, ClusterID: bench.ID, Created: now}
				s.mu.Lock()
				s.addAssignmentAndSyncLocked(a)
				s.removeAssignmentAndSyncLocked(a)
				s.mu.Unlock()
			}
		})
	}
}
