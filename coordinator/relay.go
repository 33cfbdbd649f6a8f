package coordinator

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/clustral/clustral/pkg/cork"
	"github.com/clustral/clustral/proto"
)

// Relay defaults; see Config.
const (
	// DefaultRelayRate is the bytes per second one node may send through
	// the relay: above what a kubectl transfer reaches over a direct path
	// (about 40 MB/s on two cores), so a relayed transfer is bounded by
	// the relay's own cost, and half of a 1 Gbit/s link.
	DefaultRelayRate = 64 << 20
	// DefaultRelayBurst is the bytes one node may send at once.
	DefaultRelayBurst = 1 << 20
	// DefaultRelayQueue is how many datagrams wait for one destination
	// node before more are dropped.
	DefaultRelayQueue = 1024
	// DefaultRelayQueueBytes is how many bytes of frames wait for one
	// destination node before more are dropped: about 15 ms at the
	// default rate.
	DefaultRelayQueueBytes = 1 << 20
)

// relayBufSize is the size of a relay connection's read and write
// buffers. The HTTP server's own are 4 KiB, which would cost a system
// call and a TLS record every two or three datagrams of a transfer.
const relayBufSize = 64 << 10

const (
	// relayKeepAlive is how often a quiet relay connection carries a
	// keep-alive frame.
	relayKeepAlive = 15 * time.Second
	// relayIdle is how long a relay connection may carry nothing from the
	// node before it is dropped.
	relayIdle = 3 * relayKeepAlive
	// relayAllowTTL is how long a decision that two nodes may (or may not)
	// relay to each other is reused, at most: any change to a map ends it
	// at once (Server.mapGen), so a grant is relayed from its first packet.
	// The TTL covers what changes with time alone, such as an expiring
	// device.
	relayAllowTTL = time.Second
	// relayMaxDelay is how long a datagram of a node over its rate may
	// be held back before it is dropped instead (relayConn.admit).
	relayMaxDelay = 10 * time.Millisecond
	// relayMinSleep is the shortest wait admit sleeps for; shorter ones
	// add up until they reach it, so a node just over its rate costs
	// one sleep a millisecond, not one a datagram.
	relayMinSleep = time.Millisecond
)

// relay forwards WireGuard datagrams between nodes that cannot reach each
// other over UDP. It sees only ciphertext. Each node has at most one relay
// connection (the newest wins); the relay stamps every datagram with the
// key of the connection it came on, so a node cannot speak for another.
type relay struct {
	s *Server

	mu    sync.RWMutex
	conns map[proto.Key]*relayConn
	// Limits of new connections, from Config.
	rate         rate.Limit
	burst, queue int
	queueBytes   int64

	packets, bytes                         atomic.Uint64
	droppedRate, droppedQueue, droppedPeer atomic.Uint64
	droppedSize                            atomic.Uint64
	stunRequests                           atomic.Uint64
	stunPort                               atomic.Uint32
}

func newRelay(s *Server) *relay {
	return &relay{
		s:     s,
		conns: map[proto.Key]*relayConn{},
		rate:  rate.Limit(s.cfg.RelayRate),
		burst: s.cfg.RelayBurst,
		queue: s.cfg.RelayQueue,
		// A full datagram always fits.
		queueBytes: max(int64(s.cfg.RelayQueueBytes), proto.RelayFrameHeaderLen+32+proto.MaxRelayDatagram),
	}
}

// relayConn is one node's relay connection. Datagrams for it are queued in
// out and written by its own goroutine, so a slow node only loses its own
// datagrams.
type relayConn struct {
	key    proto.Key
	nodeID string
	conn   net.Conn
	out    chan *[]byte // whole frames, in frameBufs buffers
	queued atomic.Int64 // bytes of the frames in out
	done   chan struct{}
	once   sync.Once
	lim    *rate.Limiter

	// allowed caches mayRelay decisions by destination; used only by the
	// connection's reading goroutine.
	allowed map[proto.Key]allowEntry
}

type allowEntry struct {
	ok    bool
	gen   uint64 // Server.mapGen when decided
	until time.Time
}

func (c *relayConn) close() {
	c.once.Do(func() {
		close(c.done)
		c.conn.Close()
	})
}

// RelayStats returns the relay's counters.
func (s *Server) RelayStats() proto.RelayStats {
	r := s.relay
	r.mu.RLock()
	n := len(r.conns)
	r.mu.RUnlock()
	var out, in, dropped uint64
	if ps := s.replicas; ps != nil {
		out, in, dropped = ps.forwardedOut.Load(), ps.forwardedIn.Load(), ps.dropped.Load()
	}
	return proto.RelayStats{
		ForwardedOut:    out,
		ForwardedIn:     in,
		DroppedReplica:  dropped,
		Conns:           n,
		Packets:         r.packets.Load(),
		Bytes:           r.bytes.Load(),
		DroppedRate:     r.droppedRate.Load(),
		DroppedQueue:    r.droppedQueue.Load(),
		DroppedNoPeer:   r.droppedPeer.Load(),
		DroppedTooLarge: r.droppedSize.Load(),
		STUNRequests:    r.stunRequests.Load(),
	}
}

// closeRelays ends every relay connection.
func (s *Server) closeRelays() {
	r := s.relay
	r.mu.Lock()
	conns := r.conns
	r.conns = map[proto.Key]*relayConn{}
	r.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

// handleRelayStats serves the relay's aggregate counters. They name no
// node, so they are served like metrics, without authentication.
func (s *Server) handleRelayStats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.RelayStats())
}

func (s *Server) handleRelay(w http.ResponseWriter, r *http.Request, n *node) {
	if !headerHasToken(r.Header, "Connection", "upgrade") || !strings.EqualFold(r.Header.Get("Upgrade"), proto.RelayUpgrade) {
		w.Header().Set("Upgrade", proto.RelayUpgrade)
		writeProblem(w, http.StatusUpgradeRequired, proto.CodeBadRequest, "the relay needs an HTTP/1.1 upgrade to "+proto.RelayUpgrade, "connect over HTTP/1.1 with Connection: Upgrade")
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeProblem(w, http.StatusInternalServerError, proto.CodeInternal, "relay upgrade unsupported: "+err.Error(), "connect over HTTP/1.1")
		return
	}
	conn.SetDeadline(time.Time{})
	// The connection is no longer the HTTP server's: Close waits for it.
	if !s.enter() {
		conn.Close()
		return
	}
	defer s.wg.Done()
	rl := s.relay
	rl.mu.Lock()
	c := &relayConn{
		key:     n.Key,
		nodeID:  n.ID,
		conn:    conn,
		out:     make(chan *[]byte, rl.queue),
		done:    make(chan struct{}),
		lim:     rate.NewLimiter(rl.rate, rl.burst),
		allowed: map[proto.Key]allowEntry{},
	}
	old := rl.conns[c.key]
	rl.conns[c.key] = c
	// Under rl.mu, so that announcements of one key keep its order.
	s.replicas.announceRelay(c.key, true)
	rl.mu.Unlock()
	if old != nil {
		old.close()
	}
	select {
	case <-s.stop:
		// Close began, and closeRelays may have run before c was in
		// conns.
		c.close()
	default:
	}
	// The 101 goes out only once c is in conns, so that a peer which saw
	// this node's upgrade succeed can relay to it at once.
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + proto.RelayUpgrade + "\r\n\r\n")
	if err := brw.Flush(); err != nil {
		rl.detach(c)
		return
	}
	s.log.Info("relay connection open", "node", n.ID)
	br, bw := relayBuffers(conn, brw.Reader)
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		rl.write(c, bw)
	}()
	err = rl.read(c, br)
	rl.detach(c)
	<-wrote
	s.log.Info("relay connection closed", "node", n.ID, "err", err)
}

// relayBuffers returns the buffers a relay connection is read and written
// through: relayBufSize bytes each, over conn and hijacked, the HTTP
// server's reader of conn, which may already hold the node's first
// frames. Reads larger than hijacked's buffer pass it by. hijacked's
// writer must have been flushed.
func relayBuffers(conn net.Conn, hijacked *bufio.Reader) (*bufio.Reader, *bufio.Writer) {
	return bufio.NewReaderSize(hijacked, relayBufSize), bufio.NewWriterSize(conn, relayBufSize)
}

// detach closes c and takes it out of the relay, unless a newer
// connection of its node replaced it.
func (rl *relay) detach(c *relayConn) {
	rl.mu.Lock()
	if rl.conns[c.key] == c {
		delete(rl.conns, c.key)
		rl.s.replicas.announceRelay(c.key, false)
	}
	rl.mu.Unlock()
	c.close()
}

// read forwards the frames a node sends until its connection fails.
func (rl *relay) read(c *relayConn, br *bufio.Reader) error {
	buf := make([]byte, proto.RelayFrameHeaderLen+proto.MaxRelayPayload)
	// The deadline moves at most once a second: moving it costs more
	// than forwarding a datagram.
	var armed time.Time
	for {
		if now := time.Now(); now.Sub(armed) >= time.Second {
			c.conn.SetReadDeadline(now.Add(relayIdle))
			armed = now
		}
		typ, payload, err := proto.ReadRelayFrame(br, buf)
		if err != nil {
			return err
		}
		if typ != proto.RelayFramePacket {
			continue // keep-alives, and frame types of later versions
		}
		dst, pkt, err := proto.ParseRelayPacket(payload)
		if err != nil {
			return err
		}
		rl.forward(c, dst, pkt)
	}
}

// forward queues pkt from src for dst, or drops it: when it is larger
// than a WireGuard datagram of the tunnel's MTU, src exceeds its rate, dst
// is not connected (here or, with replicas, to another replica) or not
// src's peer, or dst's queue is full (in datagrams or in bytes). A
// datagram for a node attached to another replica is sent on to it
// (peers.forward).
func (rl *relay) forward(src *relayConn, dstKey proto.Key, pkt []byte) {
	if len(pkt) > proto.MaxRelayDatagram {
		rl.droppedSize.Add(1)
		return
	}
	if !src.admit(len(pkt)) {
		rl.droppedRate.Add(1)
		return
	}
	rl.mu.RLock()
	dst := rl.conns[dstKey]
	rl.mu.RUnlock()
	if dst == nil {
		if ps := rl.s.replicas; ps == nil || dstKey == src.key || !rl.allowed(src, dstKey) || !ps.forward(src, dstKey, pkt) {
			rl.droppedPeer.Add(1)
		}
		return
	}
	if dst == src || !rl.allowed(src, dstKey) {
		rl.droppedPeer.Add(1)
		return
	}
	if rl.enqueue(dst, src.key, pkt) {
		rl.packets.Add(1)
		rl.bytes.Add(uint64(len(pkt)))
	}
}

// admit reports whether c's node may send n more bytes through the
// relay. Within its rate and burst it may at once. Over them, admit holds
// the node back, sleeping on the connection's reading goroutine (so TCP
// slows the node down), as long as the wait is within relayMaxDelay;
// beyond that it reports false and the datagram is dropped. Shaping a
// burst instead of cutting it keeps the tunnel's TCP from reading the
// relay's rate limit as loss. Called only by c's reading goroutine.
func (c *relayConn) admit(n int) bool {
	now := time.Now()
	r := c.lim.ReserveN(now, n)
	if !r.OK() {
		return false
	}
	d := r.DelayFrom(now)
	switch {
	case d == 0:
	case d > relayMaxDelay:
		r.CancelAt(now)
		return false
	case d >= relayMinSleep:
		time.Sleep(d)
	}
	return true
}

// maxFrameLen is the length of the largest frame the relay queues: a
// RelayFramePacket carrying a datagram of MaxRelayDatagram bytes.
const maxFrameLen = proto.RelayFrameHeaderLen + len(proto.Key{}) + proto.MaxRelayDatagram

// frameBufs holds the buffers of queued frames, each of capacity
// maxFrameLen, so that forwarding a datagram allocates nothing. enqueue
// takes one; whoever takes the frame from relayConn.out puts it back
// (putFrame) once written. A frame dropped with its connection is
// garbage-collected.
var frameBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, maxFrameLen)
	return &b
}}

// putFrame returns a frame taken from a relayConn's out to frameBufs.
func putFrame(f *[]byte) {
	if cap(*f) == maxFrameLen {
		*f = (*f)[:0]
		frameBufs.Put(f)
	}
}

// enqueue queues pkt from srcKey for dst and reports whether it did; it
// drops it when dst's queue is full (in datagrams or in bytes). pkt must
// be at most MaxRelayDatagram bytes.
func (rl *relay) enqueue(dst *relayConn, srcKey proto.Key, pkt []byte) bool {
	n := int64(proto.RelayFrameHeaderLen + len(srcKey) + len(pkt))
	if dst.queued.Add(n) > rl.queueBytes {
		dst.queued.Add(-n)
		rl.droppedQueue.Add(1)
		return false
	}
	frame := frameBufs.Get().(*[]byte)
	*frame = proto.AppendRelayPacket((*frame)[:0], srcKey, pkt)
	select {
	case dst.out <- frame:
		return true
	default:
		putFrame(frame)
		dst.queued.Add(-n)
		rl.droppedQueue.Add(1)
		return false
	}
}

// allowed reports whether src may relay to the node with key dstKey,
// from src's cache or the coordinator's state.
func (rl *relay) allowed(src *relayConn, dstKey proto.Key) bool {
	now := time.Now()
	s := rl.s
	if e, ok := src.allowed[dstKey]; ok && e.gen == s.mapGen.Load() && now.Before(e.until) {
		return e.ok
	}
	s.mu.Lock()
	a, b := s.nodes[src.nodeID], s.nodesByKey[dstKey]
	ok := a != nil && b != nil && s.mayRelayLocked(a, b, s.now())
	gen := s.mapGen.Load()
	s.mu.Unlock()
	if len(src.allowed) > 4096 {
		clear(src.allowed)
	}
	src.allowed[dstKey] = allowEntry{ok: ok, gen: gen, until: now.Add(relayAllowTTL)}
	return ok
}

// mayRelayLocked reports whether a and b are peers in each other's maps: a
// device and an agent of a cluster the device's user may reach now. Called
// with s.mu held.
func (s *Server) mayRelayLocked(a, b *node, now time.Time) bool {
	if a.Kind == proto.KindAgent {
		a, b = b, a
	}
	if a.Kind != proto.KindDevice || b.Kind != proto.KindAgent {
		return false
	}
	if !a.Expires.IsZero() && !now.Before(a.Expires) {
		return false
	}
	return len(s.rolesOn(s.users[a.UserID], b.ClusterID, now)) > 0
}

// write writes c's queued frames, and a keep-alive when it is quiet, until
// c closes.
func (rl *relay) write(c *relayConn, bw *bufio.Writer) {
	defer c.close()
	cc := cork.Of(c.conn)
	ka := time.NewTicker(relayKeepAlive)
	defer ka.Stop()
	// send writes a queued frame and gives its buffer back.
	send := func(frame *[]byte) error {
		c.queued.Add(-int64(len(*frame)))
		_, err := bw.Write(*frame)
		putFrame(frame)
		return err
	}
	for {
		var err error
		select {
		case <-c.done:
			return
		case <-ka.C:
			c.conn.SetWriteDeadline(time.Now().Add(relayIdle))
			_, err = bw.Write(proto.AppendRelayKeepAlive(nil))
		case frame := <-c.out:
			c.conn.SetWriteDeadline(time.Now().Add(relayIdle))
			err = send(frame)
		}
		if err != nil {
			return
		}
		// Write what else is queued before flushing, so a burst costs
		// one write.
	drain:
		for bw.Buffered() < 32<<10 {
			select {
			case frame := <-c.out:
				if err := send(frame); err != nil {
					return
				}
			default:
				break drain
			}
		}
		if err := cc.Flush(bw); err != nil {
			return
		}
	}
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// maxEndpoints bounds the endpoints one node may publish.
const maxEndpoints = 16
