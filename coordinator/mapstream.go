package coordinator

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/clustral/clustral/proto"
)

// maxPendingOps bounds a slow map consumer's queue. Past it the stream is
// closed and the node resyncs with a snapshot when it reconnects.
const maxPendingOps = 100_000

// keepAliveInterval is how often an idle map stream carries a keep-alive.
const keepAliveInterval = 15 * time.Second

// mapClient is one node's open map stream. Changes are queued as per-peer
// operations, coalesced by key, and written by the stream's own goroutine,
// so a slow node never blocks the coordinator.
type mapClient struct {
	nodeID string

	mu      sync.Mutex
	pending map[proto.Key]*proto.Peer // nil value: removal
	order   []proto.Key
	ends    []string // live sessions to end (proto.MapMessage.EndStreams)
	overrun bool
	closed  bool

	wake chan struct{}
	done chan struct{}
}

func newMapClient(nodeID string) *mapClient {
	return &mapClient{
		nodeID:  nodeID,
		pending: map[proto.Key]*proto.Peer{},
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
}

func (c *mapClient) enqueue(k proto.Key, p *proto.Peer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if _, ok := c.pending[k]; !ok {
		if len(c.order) >= maxPendingOps {
			c.overrun = true
		}
		c.order = append(c.order, k)
	}
	c.pending[k] = p
	kick(c.wake)
}

// endStream queues the end of live session id, and reports whether the
// stream is still open to carry it.
func (c *mapClient) endStream(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.ends = append(c.ends, id)
	kick(c.wake)
	return true
}

// take returns and clears the queued changes as one delta message.
func (c *mapClient) take() (msg proto.MapMessage, overrun, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	msg.EndStreams, c.ends = c.ends, nil
	if len(c.order) == 0 {
		return msg, c.overrun, len(msg.EndStreams) > 0
	}
	for _, k := range c.order {
		if p := c.pending[k]; p != nil {
			msg.Peers = append(msg.Peers, *p)
		} else {
			msg.Removed = append(msg.Removed, k)
		}
	}
	c.pending = map[proto.Key]*proto.Peer{}
	c.order = c.order[:0]
	return msg, c.overrun, true
}

func (c *mapClient) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		close(c.done)
	}
}

// ---- propagation (all called with s.mu held) ----

// sendUpsert queues p for the map stream of to, if it has one. Called with s.mu held.
func (s *Server) sendUpsert(to *node, p proto.Peer) {
	s.mapGen.Add(1)
	if c := s.clients[to.ID]; c != nil {
		c.enqueue(p.Key, &p)
	}
}

// sendRemove queues the removal of peer k for the map stream of to, if it has one. Called with s.mu held.
func (s *Server) sendRemove(to *node, k proto.Key) {
	s.mapGen.Add(1)
	if c := s.clients[to.ID]; c != nil {
		c.enqueue(k, nil)
	}
}

// syncPair brings the maps of u's devices and cluster c's agents in line
// with whether u may reach c now. Its cost is proportional to the nodes it
// touches.
// Called with s.mu held.
func (s *Server) syncPair(u *user, clusterID string) {
	now := s.now()
	reach := len(s.rolesOn(u, clusterID, now)) > 0
	agents := s.agentsByCluster[clusterID]
	for _, d := range s.devicesByUser[u.ID] {
		if reach {
			dp := s.peer(d, clusterID, now)
			for _, a := range agents {
				s.sendUpsert(a, dp)
				if !s.gone[a.ID] {
					s.sendUpsert(d, s.peer(a, "", now))
				}
			}
		} else {
			for _, a := range agents {
				s.sendRemove(a, d.Key)
				s.sendRemove(d, a.Key)
			}
		}
	}
}

// nodeChanged tells every node that sees n about its new state.
// Called with s.mu held.
func (s *Server) nodeChanged(n *node) {
	now := s.now()
	switch n.Kind {
	case proto.KindDevice:
		u := s.users[n.UserID]
		for cid := range s.clustersOf(u, now) {
			for _, a := range s.agentsByCluster[cid] {
				s.sendUpsert(a, s.peer(n, cid, now))
			}
		}
	case proto.KindAgent:
		if s.gone[n.ID] {
			return // not in its users' maps
		}
		p := s.peer(n, "", now)
		for _, u := range s.usersOn(n.ClusterID, now) {
			for _, d := range s.devicesByUser[u.ID] {
				s.sendUpsert(d, p)
			}
		}
	}
}

// removeNodeAndSyncLocked removes n from every map that holds it,
// unindexes it, and ends its own stream.
func (s *Server) removeNodeAndSyncLocked(n *node) {
	now := s.now()
	switch n.Kind {
	case proto.KindDevice:
		// Every agent that might hold it.
		u := s.users[n.UserID]
		for cid := range s.possibleClusters(u) {
			for _, a := range s.agentsByCluster[cid] {
				s.sendRemove(a, n.Key)
			}
		}
	case proto.KindAgent:
		for _, u := range s.usersOn(n.ClusterID, now) {
			for _, d := range s.devicesByUser[u.ID] {
				s.sendRemove(d, n.Key)
			}
		}
	}
	s.unindexNode(n)
	s.live.forget(n.ID)
	if c := s.clients[n.ID]; c != nil {
		c.close()
		delete(s.clients, n.ID)
	}
}

// affectedUsers returns the users an assignment applies to.
// Called with s.mu held.
func (s *Server) affectedUsers(a *assignment) []*user {
	var out []*user
	if a.UserID != "" {
		if u := s.users[a.UserID]; u != nil {
			out = append(out, u)
		}
	}
	for _, u := range s.groupMembers[a.Group] {
		out = append(out, u)
	}
	return out
}

// addAssignmentAndSyncLocked indexes a and pushes the map updates it
// causes.
func (s *Server) addAssignmentAndSyncLocked(a *assignment) {
	s.indexAssignment(a)
	s.syncAssignment(a)
}

// removeAssignmentAndSyncLocked unindexes a and pushes the map updates its
// end causes.
func (s *Server) removeAssignmentAndSyncLocked(a *assignment) {
	s.unindexAssignment(a)
	s.syncAssignment(a)
}

// syncAssignment re-syncs every user and cluster a names.
func (s *Server) syncAssignment(a *assignment) {
	clusters := s.clustersOfAssignment(a)
	for _, u := range s.affectedUsers(a) {
		for _, cid := range clusters {
			s.syncPair(u, cid)
		}
	}
}

// userChangedLocked re-syncs u on every cluster in before or after.
func (s *Server) userChangedLocked(u *user, before map[string]bool) {
	after := s.possibleClusters(u)
	for cid := range before {
		s.syncPair(u, cid)
	}
	for cid := range after {
		if !before[cid] {
			s.syncPair(u, cid)
		}
	}
}

// ---- the stream endpoint ----

// EndpointsParam is the query parameter of GET /api/v1/map with which a
// node publishes its candidate endpoints (comma-separated ip:port).
const endpointsParam = proto.MapEndpointsParam

// handleMap serves a node's map stream: a snapshot, then deltas as they
// come, keep-alives, and an agent's renewed certificates, one JSON
// document a line.
//
// Over HTTP/1.1 the connection is taken from the HTTP server (hijacked)
// once the stream is set up, and the handler returns: the stream then
// holds only its connection, a goroutine writing it and one waiting for
// the node to hang up, both with small stacks, instead of the server's
// request goroutine with the stack the request's parsing and
// authentication grew and the server's read and write buffers (about
// 10 KiB). Elsewhere (HTTP/2, a recorder in tests) it is written
// through the ResponseWriter. The stream is counted in s.wg either way,
// so Close waits for it, having ended it (endStreams).
func (s *Server) handleMap(w http.ResponseWriter, r *http.Request, n *node) {
	var eps []netip.AddrPort
	if v := r.URL.Query().Get(endpointsParam); v != "" {
		for _, e := range strings.Split(v, ",") {
			ap, err := netip.ParseAddrPort(strings.TrimSpace(e))
			if err != nil {
				writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "bad endpoint "+e, "endpoints must be ip:port, comma-separated")
				return
			}
			eps = append(eps, ap)
			if len(eps) > 16 {
				writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "too many endpoints", "publish at most 16 endpoints")
				return
			}
		}
	}
	if s.cfg.RelayOnly {
		eps = nil // passed on to no one
	}
	if _, ok := w.(http.Flusher); !ok {
		writeProblem(w, http.StatusInternalServerError, proto.CodeInternal, "streaming unsupported", "")
		return
	}
	if !s.enter() {
		writeProblem(w, http.StatusServiceUnavailable, proto.CodeInternal, "the coordinator is shutting down", "connect again")
		return
	}
	owned := true // s.wg counts this handler until the stream goes on elsewhere
	defer func() {
		if owned {
			s.wg.Done()
		}
	}()

	c := newMapClient(n.ID)
	s.mu.Lock()
	if s.nodes[n.ID] == nil { // removed meanwhile
		s.mu.Unlock()
		writeProblem(w, http.StatusUnauthorized, proto.CodeUnauthenticated, "node is no longer registered", "register again")
		return
	}
	if old := s.clients[n.ID]; old != nil {
		old.close()
	}
	s.clients[n.ID] = c
	s.sendPendingEndsLocked(n.ID, c)
	s.online[n.ID]++
	s.replicas.announceStream(n, true)
	delete(s.gone, n.ID) // back in its users' maps (nodeChanged below)
	if eps != nil {
		s.endpoints[n.ID] = eps
	}
	n.LastSeen = s.now()
	snap := s.snapshot(n, s.cfg.MeshDomain, s.ca.certPEM, s.now())
	snap.Certificate = s.renewCertLocked(n)
	s.nodeChanged(n)
	actor, cluster := s.nodeActorLocked(n)
	s.mu.Unlock()
	select {
	case <-s.stop:
		// Close began, and endStreams may have run before c was in
		// clients.
		c.close()
	default:
	}
	if eps != nil {
		s.shareEndpoints(n, eps)
	}
	s.log.Info("map stream open", "node", n.ID, "kind", n.Kind, "peers", len(snap.Peers))
	s.auditStream(n, actor, cluster, true)
	connected := s.metrics.connected.WithLabelValues(string(n.Kind))
	connected.Inc()

	ended := func() {
		s.mu.Lock()
		if s.clients[n.ID] == c {
			delete(s.clients, n.ID)
		}
		if s.online[n.ID]--; s.online[n.ID] <= 0 {
			delete(s.online, n.ID)
			s.replicas.announceStream(n, false)
		}
		if s.nodes[n.ID] != nil {
			n.LastSeen = s.now()
			s.nodeChanged(n)
		}
		s.mu.Unlock()
		c.close()
		connected.Dec()
		s.log.Info("map stream closed", "node", n.ID)
		s.auditStream(n, actor, cluster, false)
	}
	snap.Version = 1
	if out, ok := s.hijackMap(w, &snap); ok {
		owned = false
		go func() {
			defer s.wg.Done()
			defer ended()
			defer out.close()
			s.streamMap(n, c, out, snap.Certificate != "")
		}()
		return
	}
	defer ended()
	out := s.responseMap(w, r)
	if out.send(&snap) != nil {
		return
	}
	s.streamMap(n, c, out, snap.Certificate != "")
}

// mapOut is where a map stream's messages go.
type mapOut struct {
	enc   *json.Encoder
	flush func() error
	// extendWrite gives the next write its own deadline (longLived).
	extendWrite func()
	// gone is closed when the node hung up.
	gone <-chan struct{}
	// close ends the connection, if the stream owns it.
	close func()
}

// send writes one message and flushes it to the node.
func (o *mapOut) send(msg any) error {
	if err := o.enc.Encode(msg); err != nil {
		return err
	}
	return o.flush()
}

// hijackMap takes the connection of w from the HTTP server and writes the
// response's header and first, the snapshot, on it. It returns false,
// having written nothing, where the connection cannot be taken (HTTP/2,
// a recorder); then w is as it was.
func (s *Server) hijackMap(w http.ResponseWriter, first *proto.MapMessage) (*mapOut, bool) {
	h := w.Header().Clone()
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, false
	}
	// The read deadline goes (the node sends nothing more); each write
	// gets its own (extendWrite).
	conn.SetDeadline(time.Time{})
	extendWrite := func() {
		if s.timeouts.write > 0 {
			conn.SetWriteDeadline(time.Now().Add(s.timeouts.write))
		}
	}
	gone := make(chan struct{})
	out := &mapOut{
		enc: json.NewEncoder(conn), flush: func() error { return nil },
		extendWrite: extendWrite, gone: gone, close: func() { conn.Close() },
	}
	// The node sends nothing after its request: a read returns when it
	// hangs up, or when the stream ends and closes the connection.
	go func() {
		var b [1]byte
		conn.Read(b[:])
		close(gone)
	}()
	// Without a length or chunking, the body runs until the connection
	// closes (Connection: close), as a stream's does.
	h.Set("Content-Type", "application/x-ndjson")
	h.Set("Cache-Control", "no-store")
	h.Set("Connection", "close")
	var head bytes.Buffer
	head.WriteString("HTTP/1.1 200 OK\r\n")
	h.Write(&head)
	head.WriteString("\r\n")
	json.NewEncoder(&head).Encode(first)
	extendWrite()
	if _, err := conn.Write(head.Bytes()); err != nil {
		conn.Close() // ends the reader above; the stream's loop sees gone
	}
	return out, true
}

// responseMap starts the answer on w, as a stream through the HTTP
// server.
func (s *Server) responseMap(w http.ResponseWriter, r *http.Request) *mapOut {
	// The stream lives for hours: each message gets its own write
	// deadline instead of the server's.
	extendWrite := s.longLived(w)
	extendWrite()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	return &mapOut{enc: json.NewEncoder(w), flush: rc.Flush, extendWrite: extendWrite, gone: r.Context().Done(), close: func() {}}
}

// streamMap writes n's map stream to out, its snapshot sent, until the
// node hangs up, c is closed, or a write fails. certs says whether n gets
// renewed certificates.
func (s *Server) streamMap(n *node, c *mapClient, out *mapOut, certs bool) {
	version := uint64(1)
	ka := time.NewTicker(keepAliveInterval)
	defer ka.Stop()
	var renew <-chan time.Time
	if certs {
		t := time.NewTicker(time.Duration(s.certRenew.Load()))
		defer t.Stop()
		renew = t.C
	}
	for {
		select {
		case <-out.gone:
			return
		case <-c.done:
			return
		case <-renew:
			s.mu.Lock()
			cert := s.renewCertLocked(n)
			s.mu.Unlock()
			if cert == "" {
				continue
			}
			version++
			out.extendWrite()
			if err := out.send(proto.MapMessage{Version: version, Certificate: cert}); err != nil {
				return
			}
		case <-ka.C:
			out.extendWrite()
			if err := out.send(proto.MapMessage{Version: version, KeepAlive: true}); err != nil {
				return
			}
		case <-c.wake:
			msg, overrun, ok := c.take()
			if overrun {
				s.log.Warn("map stream overrun; closing so the node resyncs", "node", n.ID)
				return
			}
			if !ok {
				continue
			}
			version++
			msg.Version = version
			out.extendWrite()
			if err := out.send(msg); err != nil {
				return
			}
			s.metrics.mapDeltas.Inc()
		}
	}
}

// agentNames are the DNS names of c's agents' serving certificates.
func (s *Server) agentNames(c *cluster) []string {
	return []string{c.Name + "." + s.cfg.MeshDomain}
}

// renewCertLocked issues agent n a new serving certificate for the key it
// registered with, or returns "" when n is not an agent, registered without
// a key to renew for, or is gone with its cluster. Called with s.mu held:
// an agent removed under the lock is never renewed after.
func (s *Server) renewCertLocked(n *node) string {
	if n.Kind != proto.KindAgent || len(n.CertKey) == 0 || s.nodes[n.ID] == nil {
		return ""
	}
	c := s.clusters[n.ClusterID]
	if c == nil {
		return ""
	}
	cert, err := s.ca.issue(n.CertKey, s.agentNames(c), n.Addresses, s.now())
	if err != nil {
		s.log.Error("renew agent certificate", "node", n.ID, "err", err)
		return ""
	}
	return cert
}
