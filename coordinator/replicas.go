package coordinator

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// Replicas on one shared store (replica.go) each keep their own relay
// connections and map streams. replicas makes them one relay and one view of
// which agents are online:
//
//   - Each replica announces, in the store's presence register
//     (store.Presence: keys under its etcd lease, gone within seconds of
//     its death), its replica-to-replica address ("peer"), the nodes
//     attached to its relay ("relay/<key hex>") and the agents streaming
//     from it ("stream/<node id>"), and follows what the others announce.
//   - A datagram whose destination is attached to another replica is
//     checked here (rate, size, peers) as any other, and sent on over a
//     connection to that replica, mutual TLS with the replicas' shared
//     identity (a key pair the first replica stores in the store; no one
//     else is accepted), which queues it for the destination.
//   - An agent streaming from any replica is online for every replica, so
//     agentsGone works with replicas too.
//
// A lone coordinator (no Presence) has none: Server.replicas is nil and
// nothing here runs.

// Presence keys.
const (
	presencePeer   = "peer"
	presenceRelay  = "relay/"
	presenceStream = "stream/"
)

// metaReplicaIdentity is the Meta key of the replicas' shared TLS
// identity: a self-signed certificate and its key, PEM.
const metaReplicaIdentity = "replica_identity"

const (
	// peerQueue is how many frames wait for one other replica before
	// more are dropped.
	peerQueue = 4096
	// peerDialTimeout bounds a connection to another replica, TLS
	// handshake included; the accepting side gives a handshake as long.
	peerDialTimeout = 5 * time.Second
	// peerRetry is how long a link waits after a failed connection, the
	// first time; the wait doubles with each failure in a row, up to
	// peerRetryMax, so an unreachable replica costs a log line every
	// half a minute, not every second.
	peerRetry    = time.Second
	peerRetryMax = 30 * time.Second
)

// replicas is a replica's view of the other replicas. Its maps are guarded
// by mu, except agentsAt and offSince, which are part of the Server's
// state and guarded by Server.mu.
type replicas struct {
	s   *Server
	ann store.Announcer
	// tls is the replicas' shared identity, for both ends of a link.
	tls *tls.Config

	mu      sync.RWMutex
	addrs   map[string]string       // replica → its replica-to-replica address
	relayAt map[proto.Key]string    // node key → replica whose relay it is attached to
	links   map[string]*replicaLink // replica → link to it

	// agentsAt holds, per agent node id, the other replicas it streams
	// from; offSince when it last stopped streaming from any of them.
	// Guarded by Server.mu.
	agentsAt map[string]map[string]bool
	offSince map[string]time.Time

	forwardedOut, forwardedIn, dropped atomic.Uint64
}

// newReplicas sets up the replica's presence on p and the replicas' TLS
// identity. Called by New.
func (s *Server) newReplicas(p store.Presence) (*replicas, error) {
	ps := &replicas{
		s:        s,
		addrs:    map[string]string{},
		relayAt:  map[proto.Key]string{},
		links:    map[string]*replicaLink{},
		agentsAt: map[string]map[string]bool{},
		offSince: map[string]time.Time{},
	}
	cert, err := s.replicaIdentity()
	if err != nil {
		return nil, err
	}
	ps.tls = replicaTLS(cert)
	ps.ann = p.Announce(s.stopCtx, s.replica)
	s.goOwned(func() { ps.watch(p) })
	s.metrics.reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "clustral_coordinator_relay_replica_packets_total", ConstLabels: prometheus.Labels{"direction": "out"},
			Help: "Relayed datagrams sent on to the replica their destination is attached to (out), or received from another replica for a node attached here (in).",
		}, func() float64 { return float64(ps.forwardedOut.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "clustral_coordinator_relay_replica_packets_total", ConstLabels: prometheus.Labels{"direction": "in"},
			Help: "Relayed datagrams sent on to the replica their destination is attached to (out), or received from another replica for a node attached here (in).",
		}, func() float64 { return float64(ps.forwardedIn.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "clustral_coordinator_relay_replica_dropped_total",
			Help: "Relayed datagrams for a node attached to another replica that could not be sent there (no connection to it, or its queue was full).",
		}, func() float64 { return float64(ps.dropped.Load()) }),
	)
	return ps, nil
}

// replicaIdentity returns the replicas' shared TLS identity, creating
// and storing it if this is the first replica to need it.
func (s *Server) replicaIdentity() (tls.Certificate, error) {
	fresh, err := newReplicaIdentity(s.now())
	if err != nil {
		return tls.Certificate{}, err
	}
	var stored []byte
	err = s.store.Update(func(tx store.Tx) error {
		raw, err := tx.GetRaw(store.Meta, metaReplicaIdentity)
		if errors.Is(err, store.ErrNotFound) {
			stored = fresh
			return tx.PutRaw(store.Meta, metaReplicaIdentity, fresh)
		}
		stored = raw
		return err
	})
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load the replicas' identity: %w", err)
	}
	cert, err := tls.X509KeyPair(stored, stored)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("the replicas' identity in the store (meta/%s): %w", metaReplicaIdentity, err)
	}
	return cert, nil
}

// newReplicaIdentity makes a self-signed certificate and key, PEM, for
// the replicas to present to each other.
func newReplicaIdentity(now time.Time) ([]byte, error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "clustral coordinator replica"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(100 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return nil, fmt.Errorf("sign the replicas' certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...), nil
}

// errNotReplica refuses a TLS peer that does not present the replicas'
// certificate.
var errNotReplica = errors.New("the peer did not present this mesh's replica certificate")

// replicaTLS is the TLS configuration of both ends of a link between
// replicas: each presents cert and accepts exactly cert from the other,
// so only a process that read the identity from the store gets in.
// Chains and names are not verified: the certificate is pinned.
func replicaTLS(cert tls.Certificate) *tls.Config {
	own := cert.Certificate[0]
	pin := func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 || !bytes.Equal(raw[0], own) {
			return errNotReplica
		}
		return nil
	}
	return &tls.Config{
		Certificates:          []tls.Certificate{cert},
		ClientAuth:            tls.RequireAnyClientCert,
		InsecureSkipVerify:    true, //nolint:gosec // replaced by the pin in VerifyPeerCertificate
		VerifyPeerCertificate: pin,
		MinVersion:            tls.VersionTLS13,
		NextProtos:            []string{proto.ReplicaRelayALPN},
	}
}

// watch follows the presence register until Close begins.
func (ps *replicas) watch(p store.Presence) {
	ctx := ps.s.stopCtx
	for {
		err := p.WatchPresence(ctx, ps.apply)
		if ctx.Err() != nil {
			return
		}
		ps.s.log.Warn("follow the other replicas' presence; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(followRetry):
		}
	}
}

// apply applies one presence change of another replica.
func (ps *replicas) apply(ev store.PresenceEvent) {
	s := ps.s
	if ev.Reset {
		ps.mu.Lock()
		clear(ps.addrs)
		clear(ps.relayAt)
		ps.mu.Unlock()
		s.mu.Lock()
		for id := range ps.agentsAt {
			ps.offSince[id] = s.now()
		}
		clear(ps.agentsAt)
		s.mu.Unlock()
		return
	}
	if ev.Replica == s.replica {
		return // this replica's own state is in memory
	}
	switch {
	case ev.Key == presencePeer:
		ps.mu.Lock()
		defer ps.mu.Unlock()
		if ev.Deleted {
			delete(ps.addrs, ev.Replica)
			if l := ps.links[ev.Replica]; l != nil {
				l.cancel()
				delete(ps.links, ev.Replica)
			}
			return
		}
		ps.addrs[ev.Replica] = ev.Value
		if l := ps.links[ev.Replica]; l != nil {
			l.redial() // it may have moved
		}
	case strings.HasPrefix(ev.Key, presenceRelay):
		raw, err := hex.DecodeString(strings.TrimPrefix(ev.Key, presenceRelay))
		var k proto.Key
		if err != nil || len(raw) != len(k) {
			return
		}
		copy(k[:], raw)
		ps.mu.Lock()
		defer ps.mu.Unlock()
		if !ev.Deleted {
			ps.relayAt[k] = ev.Replica
		} else if ps.relayAt[k] == ev.Replica {
			delete(ps.relayAt, k)
		}
	case strings.HasPrefix(ev.Key, presenceStream):
		ps.agentStream(strings.TrimPrefix(ev.Key, presenceStream), ev.Replica, !ev.Deleted)
	}
}

// agentStream records that agent id opened (or closed) a map stream on
// another replica. An agent that comes back from nowhere returns to its
// users' maps, as when its stream opens here (mapStream).
func (ps *replicas) agentStream(id, replica string, open bool) {
	s := ps.s
	s.mu.Lock()
	defer s.mu.Unlock()
	at := ps.agentsAt[id]
	was := len(at) > 0
	if open {
		if at == nil {
			at = map[string]bool{}
			ps.agentsAt[id] = at
		}
		at[replica] = true
	} else {
		delete(at, replica)
		if len(at) == 0 {
			delete(ps.agentsAt, id)
		}
	}
	switch now := len(at) > 0; {
	case now && !was:
		delete(ps.offSince, id)
		if s.gone[id] {
			delete(s.gone, id)
			if n := s.nodes[id]; n != nil {
				s.nodeChanged(n)
			}
		}
	case was && !now:
		ps.offSince[id] = s.now()
	}
}

// streamingElsewhere reports whether agent id streams from another
// replica. Called with Server.mu held; ps may be nil.
func (ps *replicas) streamingElsewhere(id string) bool {
	return ps != nil && len(ps.agentsAt[id]) > 0
}

// announceStream announces that agent n streams from this replica (or no
// longer does). ps may be nil.
func (ps *replicas) announceStream(n *node, open bool) {
	if ps == nil || n.Kind != proto.KindAgent {
		return
	}
	if open {
		ps.ann.Set(presenceStream+n.ID, "")
	} else {
		ps.ann.Delete(presenceStream + n.ID)
	}
}

// announceRelay announces that node key k is attached to this replica's
// relay (or no longer is). ps may be nil.
func (ps *replicas) announceRelay(k proto.Key, attached bool) {
	if ps == nil {
		return
	}
	if attached {
		ps.ann.Set(presenceRelay+hex.EncodeToString(k[:]), "")
	} else {
		ps.ann.Delete(presenceRelay + hex.EncodeToString(k[:]))
	}
}

// forward sends pkt from src on to the replica dstKey is attached to,
// and reports whether dstKey is attached to one at all; a datagram this
// returns false for is dropped as one for a node nowhere attached. src
// may relay to dstKey (checked by the caller).
func (ps *replicas) forward(src *relayConn, dstKey proto.Key, pkt []byte) bool {
	ps.mu.RLock()
	replica, ok := ps.relayAt[dstKey]
	l := ps.links[replica]
	ps.mu.RUnlock()
	if !ok {
		return false
	}
	if l == nil {
		if l = ps.link(replica); l == nil {
			ps.dropped.Add(1)
			return true
		}
	}
	frame := proto.AppendRelayForward(make([]byte, 0, proto.RelayFrameHeaderLen+2*len(dstKey)+len(pkt)), src.key, dstKey, pkt)
	select {
	case l.out <- frame:
		ps.forwardedOut.Add(1)
	default:
		ps.dropped.Add(1)
	}
	return true
}

// link returns the link to replica, starting it; nil when the replica
// has no address or Close has begun.
func (ps *replicas) link(replica string) *replicaLink {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if l := ps.links[replica]; l != nil {
		return l
	}
	if _, ok := ps.addrs[replica]; !ok {
		return nil
	}
	ctx, cancel := context.WithCancel(ps.s.stopCtx)
	l := &replicaLink{ps: ps, replica: replica, out: make(chan []byte, peerQueue), cancel: cancel, wake: make(chan struct{}, 1)}
	if !ps.s.goOwned(func() { l.run(ctx) }) {
		cancel()
		return nil
	}
	ps.links[replica] = l
	return l
}

// replicaLink is this replica's connection to another, which carries the
// datagrams for nodes attached there. Frames wait in out; the link's
// goroutine dials the replica's announced address, writes them, and
// dials again after a failure until the replica's presence ends.
type replicaLink struct {
	ps      *replicas
	replica string
	out     chan []byte
	cancel  context.CancelFunc
	wake    chan struct{} // the replica's address changed
}

func (l *replicaLink) redial() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *replicaLink) run(ctx context.Context) {
	defer l.cancel()
	log := l.ps.s.log.With("replica", l.replica)
	wait := peerRetry
	for ctx.Err() == nil {
		l.ps.mu.Lock()
		addr, ok := l.ps.addrs[l.replica]
		if !ok {
			// The replica's presence ended while the link was down: the
			// next datagram for it starts a new link if it is back.
			if l.ps.links[l.replica] == l {
				delete(l.ps.links, l.replica)
			}
			l.ps.mu.Unlock()
			return
		}
		l.ps.mu.Unlock()
		connected, err := l.connect(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		if connected {
			wait = peerRetry
		}
		log.Warn("relay link to another replica interrupted", "addr", addr, "err", err, "retry_in", wait)
		// What waited for the link is stale by now.
		for len(l.out) > 0 {
			<-l.out
			l.ps.dropped.Add(1)
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		case <-l.wake:
		}
		wait = min(2*wait, peerRetryMax)
	}
}

// connect dials addr and writes frames to it until the connection fails,
// ctx ends or the replica's address changes. connected reports whether
// the TLS handshake succeeded.
func (l *replicaLink) connect(ctx context.Context, addr string) (connected bool, err error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: peerDialTimeout}, Config: l.ps.tls}
	dctx, cancel := context.WithTimeout(ctx, peerDialTimeout)
	conn, err := d.DialContext(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return false, fmt.Errorf("connect to replica at %s: %w", addr, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	l.ps.s.log.Info("relay link to another replica open", "replica", l.replica, "addr", addr)
	// The other side sends nothing: a read returns when it closes.
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		var b [1]byte
		conn.Read(b[:])
	}()
	defer func() { conn.Close(); <-closed }()
	bw := bufio.NewWriterSize(conn, 64<<10)
	ka := time.NewTicker(relayKeepAlive)
	defer ka.Stop()
	for {
		var frame []byte
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case <-closed:
			return true, errors.New("the other replica closed the link")
		case <-l.wake:
			return true, errors.New("the other replica's address changed")
		case <-ka.C:
			frame = proto.AppendRelayKeepAlive(nil)
		case frame = <-l.out:
		}
		conn.SetWriteDeadline(time.Now().Add(relayIdle))
		if _, err := bw.Write(frame); err != nil {
			return true, err
		}
	drain:
		for bw.Buffered() < 32<<10 {
			select {
			case frame = <-l.out:
				if _, err := bw.Write(frame); err != nil {
					return true, err
				}
			default:
				break drain
			}
		}
		if err := bw.Flush(); err != nil {
			return true, err
		}
	}
}

// ServeReplicas accepts the links of the other replicas on l until Close
// begins, and announces advertise (l's address when empty) as this
// replica's address for them. Only a replica whose store other replicas
// share, configured with a replica listen address, serves them; it
// returns an error otherwise. A connection that does not present the
// replicas' certificate is refused in the TLS handshake.
func (s *Server) ServeReplicas(l net.Listener, advertise string) error {
	ps := s.replicas
	if ps == nil {
		l.Close()
		return errors.New("replica links need a store other replicas share (--store etcd)")
	}
	if advertise == "" {
		advertise = l.Addr().String()
	}
	ps.ann.Set(presencePeer, advertise)
	stop := context.AfterFunc(s.stopCtx, func() { l.Close() })
	defer stop()
	s.log.Info("replica links listening", "addr", l.Addr().String(), "advertise", advertise)
	for {
		conn, err := l.Accept()
		if err != nil {
			if s.stopCtx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept replica links: %w", err)
		}
		if !s.goOwned(func() { ps.serveLink(conn) }) {
			conn.Close()
			return nil
		}
	}
}

// serveLink reads the frames another replica sends on conn and queues
// each for the node attached here it names, until the link fails or
// Close begins.
func (ps *replicas) serveLink(raw net.Conn) {
	s := ps.s
	conn := tls.Server(raw, ps.tls)
	defer conn.Close()
	stop := context.AfterFunc(s.stopCtx, func() { conn.Close() })
	defer stop()
	hctx, cancel := context.WithTimeout(s.stopCtx, peerDialTimeout)
	err := conn.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.log.Warn("replica link refused", "remote", raw.RemoteAddr().String(), "err", err)
		return
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	buf := make([]byte, proto.RelayFrameHeaderLen+proto.MaxRelayPayload)
	rl := s.relay
	for {
		conn.SetReadDeadline(time.Now().Add(relayIdle))
		typ, payload, err := proto.ReadRelayFrame(br, buf)
		if err != nil {
			return
		}
		if typ != proto.RelayFrameForward {
			continue
		}
		src, dstKey, pkt, err := proto.ParseRelayForward(payload)
		if err != nil {
			s.log.Warn("replica link sent a malformed frame", "remote", raw.RemoteAddr().String(), "err", err)
			return
		}
		if len(pkt) > proto.MaxRelayDatagram {
			rl.droppedSize.Add(1)
			continue
		}
		rl.mu.RLock()
		dst := rl.conns[dstKey]
		rl.mu.RUnlock()
		if dst == nil || dst.key == src {
			rl.droppedPeer.Add(1)
			continue
		}
		if rl.enqueue(dst, src, pkt) {
			ps.forwardedIn.Add(1)
			rl.packets.Add(1)
			rl.bytes.Add(uint64(len(pkt)))
		}
	}
}
