package agent

import (
	"context"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/clustral/clustral/agent/recording"
	"github.com/clustral/clustral/proto"
)

// stream is a request in flight: an ordinary request, a watch or log
// stream, or an upgraded connection.
type stream struct {
	key    proto.Key
	addr   netip.Addr
	imp    impersonation // what it was authorized as; never changes
	info   requestInfo   // what it asks for; never changes
	ctx    context.Context
	cancel context.CancelCauseFunc
	conn   *trackedConn      // nil unless served by Serve or ServeTLS
	login  string            // the caller's login, for audit events
	corr   string            // the request's correlation id
	trace  trace.SpanContext // the request's trace, as sent upstream
	h2     bool              // the client's request came over HTTP/2
	// live is what a long-lived request reports as a live session (see
	// live.go); nil for one that is not. It never changes.
	live *proto.LiveStream

	// checked is the last recheck that allowed the stream, for the
	// sweep to skip one whose decision cannot have changed (see
	// recheck); nil before the first.
	checked atomic.Pointer[streamCheck]

	responded atomic.Bool // the upstream answered; headers are on the way
	upgraded  atomic.Bool // the upstream switched protocols
	recording atomic.Bool // its recording started (rec is set)

	// The session's recording (see record.go), used only on the
	// request's goroutine: rec until it ends, then recResult; recErr
	// if it could not start or begin.
	rec       *recording.Session
	recBegan  bool
	recResult *recording.Result
	recErr    error
}

// peerLive is what one peer has open.
type peerLive struct {
	streams map[*stream]struct{}
	conns   map[*trackedConn]struct{} // pinned to this peer
}

func (p *Proxy) peerLiveLocked(k proto.Key) *peerLive {
	pl := p.live[k]
	if pl == nil {
		pl = &peerLive{streams: make(map[*stream]struct{}), conns: make(map[*trackedConn]struct{})}
		p.live[k] = pl
	}
	return pl
}

func (p *Proxy) dropIfEmptyLocked(k proto.Key, pl *peerLive) {
	if len(pl.streams) == 0 && len(pl.conns) == 0 {
		delete(p.live, k)
	}
}

func (p *Proxy) errShuttingDown() *denial {
	return deny(http.StatusServiceUnavailable, proto.CodeUpstreamUnavailable,
		"The agent of cluster '%s' is shutting down. Try again in a moment.", p.cluster)
}

// track registers s, unless the proxy is closed.
func (p *Proxy) track(s *stream) *denial {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return p.errShuttingDown()
	}
	p.peerLiveLocked(s.key).streams[s] = struct{}{}
	p.metrics.live.Inc()
	p.liveChanged(s)
	return nil
}

func (p *Proxy) untrack(s *stream) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pl := p.live[s.key]; pl != nil {
		if _, ok := pl.streams[s]; ok {
			p.metrics.live.Dec()
			p.liveChanged(s)
		}
		delete(pl.streams, s)
		p.dropIfEmptyLocked(s.key, pl)
	}
}

// pin binds c to the peer of its first request and reports whether key is
// that peer.
func (p *Proxy) pin(c *trackedConn, key proto.Key) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.pinned {
		return c.key == key
	}
	c.pinned, c.key = true, key
	if _, ok := p.conns[c]; ok { // not closed meanwhile
		p.peerLiveLocked(key).conns[c] = struct{}{}
	}
	return true
}

// recheck decides s again from the current map, as of now. A stream whose
// impersonated identity would now differ is refused too.
func (p *Proxy) recheck(s *stream, now time.Time, gen uint64) *denial {
	peer, ok := p.peers.PeerByAddr(s.addr)
	if !ok || peer.Key != s.key {
		return deny(http.StatusForbidden, proto.CodeDeviceRevoked,
			"This device was removed from cluster '%s'. Run: clustral up, and try again.", p.cluster)
	}
	if c := s.checked.Load(); c != nil && c.gen == gen && c.kind == peer.Kind && c.id == peer.Identity && now.Before(c.until) {
		return nil
	}
	imp, d := authorize(p.cluster, peer, s.info, now)
	if d != nil {
		return d
	}
	if !imp.equal(s.imp) {
		return deny(http.StatusForbidden, proto.CodeForbidden,
			"The roles of %s on cluster '%s' changed. Retry to continue with the new ones.", peer.Identity.Login, p.cluster)
	}
	s.checked.Store(&streamCheck{gen: gen, kind: peer.Kind, id: peer.Identity, until: decisionUntil(peer.Identity, now)})
	return nil
}

// streamCheck is a recheck that allowed a stream: the proxy's generation
// and the peer's kind and identity it was made with, and until when the
// clock alone cannot change it. A later recheck with the same
// generation, kind and identity (the same *proto.Identity: the map
// replaces a peer's identity, never changes one in place) before until
// would decide the same, so the sweep skips it: with 1,000 idle watches
// authorizing each stream twice a second was half of the agent's CPU.
// Reevaluate moves the generation on, so every change it announces is
// decided afresh.
type streamCheck struct {
	gen   uint64
	kind  proto.NodeKind
	id    *proto.Identity
	until time.Time
}

// decisionUntil returns when authorize's answer for id may next change
// with the clock alone: the first expiry after now of the session or of
// a grant, or now itself, so that every sweep decides again, when a
// grant has time windows.
func decisionUntil(id *proto.Identity, now time.Time) time.Time {
	until := now.Add(100 * 365 * 24 * time.Hour)
	if !id.Expires.IsZero() && id.Expires.After(now) && id.Expires.Before(until) {
		until = id.Expires
	}
	for _, g := range id.Roles {
		if g.Restrictions != nil && len(g.Restrictions.TimeWindows) > 0 {
			return now
		}
		if g.Expires != nil && g.Expires.After(now) && g.Expires.Before(until) {
			until = *g.Expires
		}
	}
	return until
}

// kill ends s with cause d. Before the upstream has answered, cancelling
// is enough and the client is told why; after, the stream's connection is
// closed as well, which also breaks a write blocked on a client that does
// not read.
func (p *Proxy) kill(s *stream, d *denial) {
	s.cancel(d)
	if s.conn != nil && s.responded.Load() {
		s.conn.Close()
	}
}

// Reevaluate decides every live request again from the current map and
// the proxy's clock, and closes those that are no longer allowed (peer
// gone or replaced, no role, grant or session expired) or whose
// impersonated identity changed, with their connections. It also closes
// idle connections whose peer is gone. It returns how many requests and
// connections it closed; a request an earlier call or its client already
// ended is not counted again, though its handler may not have returned.
//
// The owner of Peers calls Reevaluate after applying each map change; the
// proxy's sweep does the same on its own every SweepInterval. Live view
// streams also check again what their viewer may see. Requests
// that are being authorized while Reevaluate runs decide again. It must
// not be called with a lock held that PeerByAddr takes.
func (p *Proxy) Reevaluate() int {
	p.gen.Add(1)
	if p.view != nil {
		p.view.AccessChanged()
	}
	return p.reevaluate()
}

func (p *Proxy) reevaluate() int {
	type connSnap struct {
		key proto.Key
		c   *trackedConn
	}
	// Read before the snapshot: a change announced after it moves the
	// generation on, and the next pass decides again.
	gen := p.gen.Load()
	p.mu.Lock()
	ns, nc := 0, 0
	for _, pl := range p.live {
		ns += len(pl.streams)
		nc += len(pl.conns)
	}
	streams := make([]*stream, 0, ns)
	conns := make([]connSnap, 0, nc)
	for k, pl := range p.live {
		for s := range pl.streams {
			streams = append(streams, s)
		}
		for c := range pl.conns {
			conns = append(conns, connSnap{k, c})
		}
	}
	p.mu.Unlock()

	now := p.now()
	n := 0
	for _, s := range streams {
		if s.ctx.Err() != nil {
			// Already ending (killed by an earlier pass or its client
			// gone); its handler untracks it on return.
			continue
		}
		if d := p.recheck(s, now, gen); d != nil {
			p.kill(s, d)
			n++
		}
	}
	for _, cs := range conns {
		if peer, ok := p.peers.PeerByAddr(cs.c.addr); !ok || peer.Key != cs.key {
			cs.c.Close()
			n++
		}
	}
	return n
}

// ClosePeer closes every live request and connection of the peer key, at
// once, and returns how many it closed. It does not keep the peer from
// connecting again: remove it from Peers first.
func (p *Proxy) ClosePeer(key proto.Key) int {
	p.gen.Add(1)
	p.mu.Lock()
	var (
		streams []*stream
		conns   []*trackedConn
	)
	if pl := p.live[key]; pl != nil {
		for s := range pl.streams {
			streams = append(streams, s)
		}
		for c := range pl.conns {
			conns = append(conns, c)
		}
	}
	p.mu.Unlock()

	d := deny(http.StatusForbidden, proto.CodeDeviceRevoked,
		"The access of this device to cluster '%s' was revoked. Run: clustral up, and try again.", p.cluster)
	for _, s := range streams {
		s.cancel(d)
		if s.conn != nil {
			s.conn.Close()
		}
	}
	for _, c := range conns {
		c.Close()
	}
	return len(streams) + len(conns)
}

// sweep re-evaluates live requests on the proxy's clock until Close.
func (p *Proxy) sweep() {
	defer close(p.sweepDone)
	t := time.NewTicker(p.sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.reevaluate()
			if p.limits != nil {
				p.limits.evict(p.now())
			}
		}
	}
}

// Close stops the sweep and closes every server started by Serve or
// ServeTLS, every connection including upgraded ones, and every request in
// flight. Requests that arrive later are refused. Close is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var (
		servers []*http.Server
		streams []*stream
		conns   []*trackedConn
	)
	for srv := range p.servers {
		servers = append(servers, srv)
	}
	for _, pl := range p.live {
		for s := range pl.streams {
			streams = append(streams, s)
		}
	}
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()

	close(p.stop)
	<-p.sweepDone
	for _, srv := range servers {
		srv.Close()
	}
	d := p.errShuttingDown()
	for _, s := range streams {
		s.cancel(d)
	}
	for _, c := range conns {
		c.Close()
	}
	p.upgradeTr.CloseIdleConnections()
	return nil
}
