package coordinator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// Replicas. Several coordinators may serve one mesh from one shared store
// (etcd). Each keeps its own in-memory state and applies its own writes to
// it as it makes them, as a lone coordinator does; follow applies the
// other replicas' commits, which the store's Feed delivers in order, so a
// change made on any replica reaches the map streams of every replica.
// What a replica keeps only in memory (which nodes stream from it and the
// relay connections attached to it) is its own; nodes' published
// endpoints (shareEndpoints), pending logins (loginshare.go) and the
// agents' live sessions with their ends (live.go) go through the store
// too.

// followRetry is how long follow waits before watching again after the
// store failed.
const followRetry = time.Second

// newIPAM returns an empty address index for the mesh's prefixes.
func (s *Server) newIPAM() *ipam {
	return newIPAM(s.cfg.IPv4Prefix, s.v6).withRand(s.cfg.AddrRand)
}

// follow applies the commits of feed after revision rev, those of other
// replicas, to the state until Close begins. When the store no longer
// has the history it needs (etcd compacted it while this replica was cut
// off) it reloads the whole state. It runs on the goroutine that calls it
// (see goOwned).
func (s *Server) follow(feed store.Feed, rev int64) {
	ctx := s.stopCtx
	s.applied.advance(rev)
	for {
		err := feed.Watch(ctx, rev, func(c store.Commit) error {
			s.applyCommit(feed, c)
			rev = c.Rev
			s.applied.advance(rev)
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		var ce *store.CompactedError
		if errors.As(err, &ce) {
			s.log.Warn("the store's history since this replica's last change is gone: reloading the whole state", "err", err)
			var r int64
			if r, err = s.resync(feed); err == nil {
				rev = r
				s.applied.advance(rev)
				continue
			}
		}
		s.log.Error("follow the store's changes; retrying", "after_revision", rev, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(followRetry):
		}
	}
}

// applyOrder is the order in which one commit's changes are applied:
// removals first (a user's devices leave the maps while the user still
// maps to the clusters, assignments before their role and cluster), then
// additions, each after what it refers to. It is the order the handlers
// apply their own writes in.
var (
	deleteOrder = []store.Bucket{store.Nodes, store.Assignments, store.Sessions, store.Requests, store.Roles, store.Clusters, store.Users, store.Addresses, store.Logins, store.Live}
	putOrder    = []store.Bucket{store.Addresses, store.Users, store.Clusters, store.Roles, store.Assignments, store.Requests, store.Sessions, store.Nodes, store.Logins, store.Live}
)

// applyCommit applies the changes of c that this replica did not make
// itself (store.Feed.Superseded) to the state and the map streams.
func (s *Server) applyCommit(feed store.Feed, c store.Commit) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var changes []store.Change
	for _, ch := range c.Changes {
		if !feed.Superseded(c.Rev, ch.Bucket, ch.Key) {
			changes = append(changes, ch)
		}
	}
	for _, pass := range []struct {
		deleted bool
		order   []store.Bucket
	}{{true, deleteOrder}, {false, putOrder}} {
		for _, b := range pass.order {
			for _, ch := range changes {
				if ch.Bucket != b || ch.Deleted != pass.deleted {
					continue
				}
				if err := s.applyChangeLocked(ch); err != nil {
					s.log.Error("apply another replica's change", "revision", c.Rev, "bucket", ch.Bucket, "key", ch.Key, "err", err)
				}
			}
		}
	}
	s.metrics.replicaApplied.Add(float64(len(changes)))
}

// applyChangeLocked applies one change made by another replica, through
// the same index and sync methods the handlers use for their own.
// Called with s.mu held.
func (s *Server) applyChangeLocked(ch store.Change) error {
	switch ch.Bucket {
	case store.Users:
		if ch.Deleted {
			return nil // users are disabled, never deleted
		}
		var u user
		if err := decodeChange(ch, &u); err != nil {
			return err
		}
		old := s.users[u.ID]
		var before map[string]bool
		if old != nil {
			before = s.possibleClusters(old)
		}
		s.indexUser(&u)
		if old != nil {
			s.userChangedLocked(&u, before)
		}
	case store.Sessions:
		if ch.Deleted {
			delete(s.sessions, ch.Key)
			return nil
		}
		var se session
		if err := decodeChange(ch, &se); err != nil {
			return err
		}
		s.sessions[se.IDHash] = &se
	case store.Nodes:
		if ch.Deleted {
			if n := s.nodes[ch.Key]; n != nil {
				s.removeNodeAndSyncLocked(n)
			}
			return nil
		}
		var n node
		if err := decodeChange(ch, &n); err != nil {
			return err
		}
		old := s.nodes[n.ID]
		if old != nil {
			eps, gone := s.endpoints[n.ID], s.gone[n.ID]
			s.unindexNode(old)
			s.endpoints[n.ID] = eps
			if gone {
				s.gone[n.ID] = true
			}
		} else if n.Kind == proto.KindAgent && s.replicas != nil && !s.replicas.streamingElsewhere(n.ID) {
			// Registered on another replica: in its users' maps once
			// its stream opens, as there (registerNode).
			s.gone[n.ID] = true
		}
		s.indexNode(&n)
		s.nodeChanged(&n)
	case store.Clusters:
		old := s.clusters[ch.Key]
		if ch.Deleted {
			if old != nil {
				s.unindexCluster(old)
			}
			return nil
		}
		var c cluster
		if err := decodeChange(ch, &c); err != nil {
			return err
		}
		users := s.usersOn(c.ID, s.now())
		s.indexCluster(&c)
		for id, u := range s.usersOn(c.ID, s.now()) {
			users[id] = u
		}
		for _, u := range users {
			s.syncPair(u, c.ID)
		}
	case store.Roles:
		if ch.Deleted {
			if r := s.roles[ch.Key]; r != nil {
				s.unindexRole(r)
				for _, a := range s.assignmentsByRole[r.ID] {
					s.syncAssignment(a)
				}
			}
			return nil
		}
		var r role
		if err := decodeChange(ch, &r); err != nil {
			return err
		}
		s.indexRole(&r)
		for _, a := range s.assignmentsByRole[r.ID] {
			s.syncAssignment(a)
		}
	case store.Assignments:
		if old := s.assignments[ch.Key]; old != nil {
			s.removeAssignmentAndSyncLocked(old)
		}
		if ch.Deleted {
			return nil
		}
		var a assignment
		if err := decodeChange(ch, &a); err != nil {
			return err
		}
		s.addAssignmentAndSyncLocked(&a)
	case store.Requests:
		if ch.Deleted {
			delete(s.requests, ch.Key)
			return nil
		}
		var ar accessRequest
		if err := decodeChange(ch, &ar); err != nil {
			return err
		}
		s.setRequestLocked(&ar)
	case store.Logins:
		return s.applyLoginLocked(ch)
	case store.Live:
		return s.applyLiveLocked(ch)
	case store.Addresses:
		a, err := netip.ParseAddr(ch.Key)
		if err != nil {
			return fmt.Errorf("overlay address %q: %w", ch.Key, err)
		}
		if ch.Deleted {
			s.ipam.free(a)
		} else {
			s.ipam.use(a)
		}
	}
	return nil
}

// decodeChange decodes the new value of ch into v.
func decodeChange(ch store.Change, v any) error {
	if err := json.Unmarshal(ch.Value, v); err != nil {
		return fmt.Errorf("decode %s/%s: %w", ch.Bucket, ch.Key, err)
	}
	return nil
}

// resync reloads the whole state from feed and ends every map stream, so
// each node reconnects and starts again from a snapshot. It holds s.mu
// throughout, so no write of this replica falls between the read and the
// swap. It returns the revision it read at.
func (s *Server) resync(feed store.Feed) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var st state
	st.init()
	st.ipam = s.newIPAM()
	rev, err := feed.ViewRev(st.load)
	if err != nil {
		return 0, fmt.Errorf("reload the state: %w", err)
	}
	st.online, st.endpoints = s.online, s.endpoints
	for id := range st.endpoints {
		if st.nodes[id] == nil {
			delete(st.endpoints, id)
		}
	}
	s.state = st
	for id, c := range s.clients {
		c.close()
		delete(s.clients, id)
	}
	s.mapGen.Add(1)
	s.log.Info("state reloaded from the store", "revision", rev, "nodes", len(s.nodes), "users", len(s.users))
	return rev, nil
}

// singleton runs f, work that must run in one place at a time (expiry,
// audit retention and checkpoints), until Close begins: at once on a
// store with one writer, and on a shared store only while this replica
// is the one the store elected (store.Elector), moving to another
// replica when it dies or loses etcd. f must return soon after its
// context ends.
func (s *Server) singleton(feed store.Feed, f func(ctx context.Context)) {
	el, ok := s.store.(store.Elector)
	if feed == nil || !ok {
		s.goOwned(func() { f(s.stopCtx) })
		return
	}
	s.goOwned(func() {
		el.Lead(s.stopCtx, "singleton", s.replica, func(ctx context.Context) {
			s.log.Info("this replica now runs expiry, audit retention and checkpoints", "replica", s.replica)
			s.leader.Store(true)
			defer s.leader.Store(false)
			f(ctx)
		})
	})
}

// replicaName names this process among the replicas: the host name and
// a random suffix, so that two replicas on one host differ.
func replicaName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "coordinator"
	}
	var b [3]byte
	rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// touchInterval is how often touchAgents runs: often enough within any
// AgentTTL that an agent streaming from some replica is never reclaimed.
func (s *Server) touchInterval() time.Duration {
	return min(s.cfg.AgentTTL/4, time.Hour)
}

// touchAgents stores, every touchInterval until ctx ends, the time as the
// last-seen time of every agent streaming from this replica. The replica
// that expires agents sees only its own streams: without this it would
// reclaim an agent that streams from another replica for longer than
// AgentTTL. Only on a shared store; a node deleted meanwhile stays
// deleted.
func (s *Server) touchAgents(ctx context.Context) {
	s.every(ctx, s.touchInterval(), func() {
		now := s.now()
		s.mu.Lock()
		defer s.mu.Unlock()
		var agents []*node
		for id := range s.online {
			if n := s.nodes[id]; n != nil && n.Kind == proto.KindAgent {
				agents = append(agents, n)
			}
		}
		if len(agents) == 0 {
			return
		}
		err := s.store.Update(func(tx store.Tx) error {
			for _, n := range agents {
				if err := updateNode(tx, n.ID, func(stored *node) { stored.LastSeen = now }); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			s.log.Error("store the agents' last-seen times", "err", err)
			return
		}
		for _, n := range agents {
			n.LastSeen = now
		}
	})
}

// shareEndpoints stores n's published endpoints in its record on a
// shared store, so that every replica offers them to n's peers: a node
// and its peers may stream from different replicas. A node deleted
// meanwhile stays deleted. It is called without s.mu, so that the write
// to etcd holds no one up (a replica's nodes reconnecting at once to
// another each publish theirs).
func (s *Server) shareEndpoints(n *node, eps []netip.AddrPort) {
	if s.feed == nil {
		return
	}
	err := s.store.Update(func(tx store.Tx) error {
		return updateNode(tx, n.ID, func(stored *node) { stored.Endpoints = eps })
	})
	if err != nil {
		s.log.Error("share a node's endpoints with the other replicas", "node", n.ID, "err", err)
	}
}

// updateNode applies change to the stored record of node id inside tx;
// a node that is no longer stored is left alone.
func updateNode(tx store.Tx, id string, change func(*node)) error {
	var stored node
	if err := store.Get(tx, store.Nodes, id, &stored); errors.Is(err, store.ErrNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	change(&stored)
	return store.Put(tx, store.Nodes, id, &stored)
}

// deleteNodesWhere deletes inside tx the nodes a removal ends: mem, the
// ones this replica knows, and on a shared store every stored node that
// match accepts, so that a node another replica registered and this one
// has not applied yet is removed too (revoking a join token removes every
// agent of the cluster, whichever replica registered it). The scan puts
// the whole Nodes bucket in the transaction's reads, so a registration
// committed meanwhile makes it run again. It returns how many nodes it
// deleted.
func (s *Server) deleteNodesWhere(tx store.Tx, mem []*node, match func(*node) bool) (int, error) {
	if s.feed == nil {
		return len(mem), deleteNodes(tx, mem)
	}
	return deleteStoredWhere(tx, store.Nodes, match, deleteNode)
}

// deleteSessionsWhere is deleteNodesWhere for sessions: mem holds the
// hashes of the sessions this replica knows.
func (s *Server) deleteSessionsWhere(tx store.Tx, mem []string, match func(*session) bool) (int, error) {
	if s.feed == nil {
		return len(mem), deleteSessions(tx, mem)
	}
	return deleteStoredWhere(tx, store.Sessions, match, func(tx store.Tx, se *session) error { return tx.Delete(store.Sessions, se.IDHash) })
}

// deleteStoredWhere deletes with del every record of bucket b inside tx
// that match accepts, and returns how many.
func deleteStoredWhere[T any](tx store.Tx, b store.Bucket, match func(*T) bool, del func(store.Tx, *T) error) (int, error) {
	stored, err := store.List[T](tx, b)
	if err != nil {
		return 0, err
	}
	n := 0
	for i := range stored {
		if match(&stored[i]) {
			if err := del(tx, &stored[i]); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// replicaCatchUp bounds how long a request with a credential this replica
// does not know waits for the replica to apply what other replicas
// committed before the request arrived (awaitReplicated).
const replicaCatchUp = time.Second

// appliedRev is the store revision a replica's view has applied. Safe for
// concurrent use.
type appliedRev struct {
	mu   sync.Mutex
	rev  int64
	wake chan struct{} // closed and replaced when rev advances
}

// advance records that every commit up to rev is applied.
func (a *appliedRev) advance(rev int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if rev <= a.rev {
		return
	}
	a.rev = rev
	if a.wake != nil {
		close(a.wake)
		a.wake = nil
	}
}

// at returns the applied revision and a channel closed when it advances.
func (a *appliedRev) at() (int64, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.wake == nil {
		a.wake = make(chan struct{})
	}
	return a.rev, a.wake
}

// awaitReplicated is for a credential (session, node token, join token)
// this replica may not know yet because another replica has just made it:
// a load balancer can send the next request of a login, a registration or
// a join to any replica. found reports whether the view has it; it takes
// s.mu itself. When found is false and replicas share the store, it waits
// until found is true or this replica has applied every commit up to the
// store's revision at the call, for at most replicaCatchUp or until ctx
// ends, and returns found's last answer. Without replicas it is found().
// Called without s.mu held.
func (s *Server) awaitReplicated(ctx context.Context, found func() bool) bool {
	if found() || s.feed == nil {
		return found()
	}
	var target int64
	var err error
	if lc, ok := s.feed.(store.LastCommitter); ok {
		// The store's revision may be ahead of every commit the watch
		// delivers (presence, elections): waiting for it would hold
		// every refusal for replicaCatchUp.
		target, err = lc.LastCommit()
	} else {
		target, err = s.feed.ViewRev(func(store.Tx) error { return nil })
	}
	if err != nil {
		return found()
	}
	timer := time.NewTimer(replicaCatchUp)
	defer timer.Stop()
	for {
		rev, wake := s.applied.at()
		if found() {
			return true
		}
		if rev >= target {
			return false
		}
		select {
		case <-wake:
		case <-timer.C:
			return found()
		case <-ctx.Done():
			return false
		}
	}
}
