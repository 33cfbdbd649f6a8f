package node

import (
	"encoding/binary"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"

	"github.com/clustral/clustral/proto"
)

// Handshake order.
//
// wireguard-go keeps one handshake state per peer and processes handshake
// messages on several goroutines at once. When two nodes initiate at the
// same moment (a device with traffic for an agent that is starting its own
// handshake as the two learn of each other), each consumes the other's
// initiation, which replaces its own initiation's state, so neither
// response completes a handshake and the pair waits for WireGuard's 5 s
// retry. Worse, when one node processes the other's initiation and the
// response to its own concurrently, it can derive the session from the
// response while the index the peer will address it by is already gone:
// both ends log a completed handshake, one end's packets arrive and the
// other end hears nothing until its 15 s "stopped hearing back" retry.
//
// The Bind keeps wireguard-go from seeing both initiations of a crossing,
// so these states never occur:
//   - Of each pair, one node leads (Node.lazyToward: the agent, which
//     initiates as soon as a device arrives; between nodes of one kind,
//     the smaller key). For RekeyTimeout after the leader sent an
//     initiation (as long as wireguard-go waits before it retries), the
//     leader's Bind keeps the peer's initiations from wireguard-go; the
//     peer consumes the leader's, and its answer completes the handshake.
//     The peer can fail to answer: when it creates its own initiation
//     while it consumes the leader's, wireguard-go on its side replaces
//     the consumed state and sends no response. So the leader holds the
//     peer's latest crossing initiation, drops it once its own is
//     answered, and hands it to wireguard-go when its own is not answered
//     within crossWait, from then on dropping any late answer to its own,
//     which would otherwise be processed beside the peer's initiation.
//   - An initiation from a sender wireguard-go is not configured with yet
//     (the map has not named it, or the UAPI set adding it is still
//     running) is held, not handed to wireguard-go, which would drop it or
//     answer it before this node's own first initiation is on its way; it
//     is delivered once the peer is configured, or a new endpoint names
//     the address it came from (Node.Apply calls peerReady and
//     releaseHeld), or after holdInitiation as it came.
//     Otherwise a leader whose initiation reached the peer before the
//     peer knew it would drop the peer's and wait for its own retry.
//   - While no direct path is confirmed, a handshake response goes back
//     the way its initiation came, direct to the address it came from or
//     over the relay, whatever path the Bind would choose for the peer
//     now: the initiator sent on a path that works from its side. An agent that has just started initiates
//     before its relay connection is up, on the device's direct address;
//     a response over the device's relay, which the coordinator cannot
//     deliver yet, would be lost and the pair would wait 5 s.

// holdInitiation bounds how long a held initiation waits for the map to
// name its sender: about as long as the maps of two nodes, sent at the
// same moment, may arrive apart. An initiation from a peer at an address
// its endpoint does not name yet waits as long, then goes to
// wireguard-go, which knows the peer by its key.
const holdInitiation = time.Second

// crossWait is how long a leader waits for the answer to its initiation
// before it answers the peer's crossing one instead: far longer than a
// peer takes to answer, short enough to stay well within a second.
const crossWait = 500 * time.Millisecond

// maxHeld bounds the initiations held at once; beyond it, initiations
// from unknown senders go to wireguard-go at once.
const maxHeld = 64

// isInitiation reports whether pkt is a WireGuard handshake initiation.
func isInitiation(pkt []byte) bool {
	return len(pkt) == device.MessageInitiationSize &&
		binary.LittleEndian.Uint32(pkt) == device.MessageInitiationType
}

// heldSrc is where a held initiation came from: the relay's sender key, or
// a direct address.
type heldSrc struct {
	key  proto.Key
	addr netip.AddrPort
}

type heldInit struct {
	pkt []byte
	at  time.Time
}

// peerReady records that wireguard-go is configured with the peer key,
// and whether this node leads their handshakes (see "Handshake order").
// Until then, the peer's initiations are held like a stranger's: they
// would reach wireguard-go before it can answer them, or before this
// node's own first initiation to the peer is on its way. Node calls it
// after the UAPI set that adds the peer, then releaseHeld.
func (b *Bind) peerReady(key proto.Key, lead bool) {
	b.peers.Lock()
	defer b.peers.Unlock()
	b.peers.ready[key] = lead
	if pp := b.peers.paths[key]; pp != nil {
		pp.mu.Lock()
		pp.ready, pp.lead = true, lead
		pp.mu.Unlock()
	}
}

// isResponse reports whether pkt is a WireGuard handshake response.
func isResponse(pkt []byte) bool {
	return len(pkt) == device.MessageResponseSize &&
		binary.LittleEndian.Uint32(pkt) == device.MessageResponseType
}

// handshakeOut records when this node last sent the peer a handshake
// initiation, if bufs hold one. For a handshake response it reports the
// way the initiation it answers came (answerVia): when answer is true, to
// send it on, direct to addr, or over the relay when addr is invalid.
func (pp *peerPath) handshakeOut(bufs [][]byte) (addr netip.AddrPort, answer bool) {
	if len(bufs) == 1 && isResponse(bufs[0]) {
		pp.mu.Lock()
		defer pp.mu.Unlock()
		if pp.answerAt.IsZero() || time.Since(pp.answerAt) > device.RekeyTimeout {
			return netip.AddrPort{}, false
		}
		return pp.answerVia, true
	}
	for _, buf := range bufs {
		if isInitiation(buf) {
			pp.mu.Lock()
			pp.initAt = time.Now()
			pp.initIdx = binary.LittleEndian.Uint32(buf[4:8])
			pp.answered = false
			pp.dropCrossedLocked() // the peer answers this one
			pp.mu.Unlock()
		}
	}
	return netip.AddrPort{}, false
}

// responseIn reports whether the handshake response pkt from the peer goes
// to wireguard-go: not when it answers an initiation this node gave up on
// (releaseCrossed). An answer to the latest initiation ends the wait for
// it: the crossing initiation held meanwhile is dropped.
func (pp *peerPath) responseIn(pkt []byte) bool {
	to := binary.LittleEndian.Uint32(pkt[8:12])
	pp.mu.Lock()
	defer pp.mu.Unlock()
	switch {
	case pp.gaveUp && to == pp.abandoned:
		return false
	case to == pp.initIdx:
		pp.answered = true
		pp.dropCrossedLocked()
	}
	return true
}

// holdCrossed keeps the crossing initiation pkt, which came from src to
// e, until this node's own initiation is answered, or crossWait passes
// without an answer and releaseCrossed hands it to wireguard-go. Once
// the own initiation is answered, a crossing one is dropped outright.
func (b *Bind) holdCrossed(pkt []byte, e *Endpoint, src heldSrc) {
	pp := e.path
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.answered {
		return
	}
	pp.crossed = append(pp.crossed[:0], pkt...)
	pp.crossedSrc, pp.crossedEP = src, e
	if pp.crossTimer == nil {
		pp.crossTimer = time.AfterFunc(crossWait, func() { b.releaseCrossed(pp) })
	}
}

// releaseCrossed hands wireguard-go the peer's crossing initiation when
// this node's own is still unanswered, and drops any answer to the own
// one from then on: wireguard-go answers the peer's instead.
func (b *Bind) releaseCrossed(pp *peerPath) {
	pp.mu.Lock()
	pp.crossTimer = nil
	if pp.crossed == nil || pp.answered {
		pp.crossed = nil
		pp.mu.Unlock()
		return
	}
	pkt, src, e := pp.crossed, pp.crossedSrc, pp.crossedEP
	pp.crossed = nil
	pp.abandoned, pp.gaveUp = pp.initIdx, true
	pp.answerVia, pp.answerAt = src.addr, time.Now()
	pp.mu.Unlock()
	buf := getPacketBuf(len(pkt))
	copy(*buf, pkt)
	select {
	case b.relayIn <- relayPacket{buf: buf, n: len(pkt), ep: e}:
		b.log.Debug("our handshake initiation went unanswered; answering the peer's", "peer", pp.key.ShortString())
	default:
		putPacketBuf(buf)
	}
}

// dropCrossedLocked forgets the crossing initiation held; pp.mu is held.
func (pp *peerPath) dropCrossedLocked() {
	pp.crossed = nil
	if pp.crossTimer != nil {
		pp.crossTimer.Stop()
		pp.crossTimer = nil
	}
}

// cameBy records that an initiation from the peer, which goes to
// wireguard-go now, came from src: its response goes back that way.
func (pp *peerPath) cameBy(src heldSrc, now time.Time) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	pp.answerVia, pp.answerAt = src.addr, now // relayed: addr is invalid
}

// initiationIn decides what becomes of the handshake initiation pkt that
// came from src, whose keyed endpoint is e (nil when it has none). It
// reports whether wireguard-go gets it now; if not, it was held or
// dropped.
func (b *Bind) initiationIn(pkt []byte, e *Endpoint, src heldSrc) bool {
	if e != nil && e.path != nil {
		now := time.Now()
		if admit, ready := e.path.admit(now); ready {
			if admit {
				e.path.cameBy(src, now)
			} else {
				b.log.Debug("held a handshake initiation that crosses ours", "peer", e.key.ShortString())
				b.holdCrossed(pkt, e, src)
			}
			return admit
		}
	}
	return !b.hold(pkt, src)
}

// admit reports whether a handshake initiation from the peer goes to
// wireguard-go now: not when this node leads and sent its own initiation
// within RekeyTimeout. The peer's initiation then crossed it, or is a
// retry of one that did, and wireguard-go must not consume it: the peer
// answers this node's. ready reports whether the peer is ready
// (peerReady); admit means nothing when it is not.
func (pp *peerPath) admit(now time.Time) (admit, ready bool) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	crossing := pp.lead && !pp.initAt.IsZero() && now.Sub(pp.initAt) < device.RekeyTimeout
	return !crossing, pp.ready
}

// hold keeps a copy of the initiation pkt from src, a sender that is not a
// ready peer, for releaseHeld, and reports whether it did: not when maxHeld
// initiations are held already. A later initiation from src replaces the
// earlier one, as it replaces it in its sender.
func (b *Bind) hold(pkt []byte, src heldSrc) bool {
	b.held.Lock()
	defer b.held.Unlock()
	if _, ok := b.held.bySrc[src]; !ok && len(b.held.bySrc) >= maxHeld {
		return false
	}
	b.held.bySrc[src] = heldInit{pkt: append([]byte(nil), pkt...), at: time.Now()}
	return true
}

// releaseHeld hands wireguard-go the held initiations held for
// holdInitiation already, as it would have received them, and with
// ready those whose sender is now a ready peer. Node calls it with ready
// after it configured new peers; the probe loop calls it without.
func (b *Bind) releaseHeld(now time.Time, ready bool) {
	b.held.Lock()
	var out []heldSrc
	for src, h := range b.held.bySrc {
		if ready || now.Sub(h.at) >= holdInitiation {
			out = append(out, src)
		}
	}
	b.held.Unlock()

	for _, src := range out {
		var e *Endpoint
		if src.key.IsZero() {
			if v, ok := b.byAddr.Load(src.addr); ok {
				e = v.(*Endpoint)
			}
		} else {
			b.peers.Lock()
			e = b.peers.byKey[src.key]
			b.peers.Unlock()
		}
		b.held.Lock()
		h, ok := b.held.bySrc[src]
		expired := ok && now.Sub(h.at) >= holdInitiation
		admit, isReady := true, false
		if ok && e != nil && e.path != nil {
			admit, isReady = e.path.admit(now)
		}
		if ok && (isReady || expired) {
			delete(b.held.bySrc, src)
		}
		b.held.Unlock()
		if !ok || !isReady && !expired {
			continue
		}
		if !admit {
			b.holdCrossed(h.pkt, e, src)
			continue
		}
		var ep *Endpoint
		switch {
		case e != nil:
			ep = e
			if isReady {
				e.path.cameBy(src, now)
			}
		case src.key.IsZero():
			ep = &Endpoint{direct: &conn.StdNetEndpoint{AddrPort: src.addr}, addr: src.addr}
		default:
			ep = &Endpoint{key: src.key, bind: b}
		}
		buf := getPacketBuf(len(h.pkt))
		copy(*buf, h.pkt)
		select {
		case b.relayIn <- relayPacket{buf: buf, n: len(h.pkt), ep: ep}:
			b.log.Debug("released a held handshake initiation", "from", ep, "ready", isReady)
		default:
			putPacketBuf(buf)
		}
	}
}
