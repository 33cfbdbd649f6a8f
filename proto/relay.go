package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// ---- Relay ----
//
// A node keeps one relay connection to the coordinator: GET RelayPath with
// "Connection: Upgrade", "Upgrade: " + RelayUpgrade and the node token as
// bearer, over HTTP/1.1. The coordinator answers 101 Switching Protocols
// and both sides then exchange relay frames on the connection:
//
//	type (1 byte) | payload length (4 bytes, big endian) | payload
//
// A RelayFramePacket payload is a WireGuard public key (32 bytes) followed
// by one WireGuard datagram. From a node the key names the destination;
// from the coordinator it names the authenticated sender, which the
// coordinator stamps itself. The datagrams are WireGuard ciphertext: the
// relay cannot read them.

// RelayPath is the path of the relay endpoint.
const RelayPath = APIVersion + "/relay"

// RelayUpgrade is the protocol name of the relay's HTTP upgrade.
const RelayUpgrade = "clustral-relay/1"

// RelayFrameType is the first byte of a relay frame.
type RelayFrameType byte

const (
	// RelayFramePacket carries a key and a WireGuard datagram.
	RelayFramePacket RelayFrameType = 1
	// RelayFrameKeepAlive carries nothing; each side sends one when it has
	// been quiet, so the other can tell a dead connection from an idle one.
	RelayFrameKeepAlive RelayFrameType = 2
	// RelayFrameForward carries a datagram between coordinator replicas
	// (never to or from a node): the authenticated sender's key, the
	// destination's key and the datagram. See AppendRelayForward.
	RelayFrameForward RelayFrameType = 3
)

// RelayFrameHeaderLen is the length of a relay frame header.
const RelayFrameHeaderLen = 5

// MaxRelayPayload bounds a relay frame's payload: a key and the largest UDP
// datagram.
const MaxRelayPayload = 32 + 65535

// MaxRelayDatagram bounds the WireGuard datagrams the relay carries: a
// transport message holding one packet of the tunnel's MTU (1420, the
// netstack's and the TUN's) padded to 16 bytes, with its 16-byte header
// and 16-byte tag. Handshake messages are smaller. The relay refuses
// larger ones.
const MaxRelayDatagram = TunnelMTU + 16 + 32

// TunnelMTU is the MTU of the tunnel interfaces of every node.
const TunnelMTU = 1420

// ErrRelayFrame is the error of a malformed relay frame. The connection it
// came on cannot be trusted further and must be closed.
var ErrRelayFrame = errors.New("malformed relay frame")

// AppendRelayPacket appends a RelayFramePacket frame carrying key and pkt
// to dst.
func AppendRelayPacket(dst []byte, key Key, pkt []byte) []byte {
	dst = append(dst, byte(RelayFramePacket))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(key)+len(pkt)))
	dst = append(dst, key[:]...)
	return append(dst, pkt...)
}

// AppendRelayKeepAlive appends a RelayFrameKeepAlive frame to dst.
func AppendRelayKeepAlive(dst []byte) []byte {
	return append(dst, byte(RelayFrameKeepAlive), 0, 0, 0, 0)
}

// ReadRelayFrame reads one frame from r into buf, which must hold at least
// RelayFrameHeaderLen+MaxRelayPayload bytes, and returns its type and
// payload (a subslice of buf). A frame of unknown type is returned as is,
// for the caller to skip. Errors from r are returned unchanged; a frame
// over the limits wraps ErrRelayFrame.
func ReadRelayFrame(r io.Reader, buf []byte) (RelayFrameType, []byte, error) {
	if _, err := io.ReadFull(r, buf[:RelayFrameHeaderLen]); err != nil {
		return 0, nil, err
	}
	typ := RelayFrameType(buf[0])
	n := binary.BigEndian.Uint32(buf[1:RelayFrameHeaderLen])
	if n > MaxRelayPayload || int(n) > len(buf) {
		return 0, nil, fmt.Errorf("%w: payload of %d bytes", ErrRelayFrame, n)
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return typ, buf[:n], nil
}

// ParseRelayPacket splits a RelayFramePacket payload into its key and
// datagram.
func ParseRelayPacket(payload []byte) (Key, []byte, error) {
	var k Key
	if len(payload) <= len(k) {
		return k, nil, fmt.Errorf("%w: packet payload of %d bytes", ErrRelayFrame, len(payload))
	}
	copy(k[:], payload)
	return k, payload[len(k):], nil
}

// ---- Relay between coordinator replicas ----
//
// Replicas sharing one store forward datagrams for nodes attached to
// another replica's relay over a connection of their own (mutual TLS
// between replicas, see the coordinator), carrying relay frames: keep-
// alives and RelayFrameForward frames, whose payload is
//
//	sender key (32) | destination key (32) | WireGuard datagram

// ReplicaRelayALPN is the TLS application protocol of the connections
// between coordinator replicas.
const ReplicaRelayALPN = "clustral-replica-relay/1"

// AppendRelayForward appends a RelayFrameForward frame carrying pkt from
// src to dstKey to dst.
func AppendRelayForward(dst []byte, src, dstKey Key, pkt []byte) []byte {
	dst = append(dst, byte(RelayFrameForward))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(src)+len(dstKey)+len(pkt)))
	dst = append(dst, src[:]...)
	dst = append(dst, dstKey[:]...)
	return append(dst, pkt...)
}

// ParseRelayForward splits a RelayFrameForward payload into its sender,
// destination and datagram.
func ParseRelayForward(payload []byte) (src, dst Key, pkt []byte, err error) {
	if len(payload) <= len(src)+len(dst) {
		return src, dst, nil, fmt.Errorf("%w: forward payload of %d bytes", ErrRelayFrame, len(payload))
	}
	copy(src[:], payload)
	copy(dst[:], payload[len(src):])
	return src, dst, payload[len(src)+len(dst):], nil
}

// RelayStats are the coordinator relay's counters, served at
// GET RelayPath + "/stats".
type RelayStats struct {
	// Conns is the number of open relay connections.
	Conns int `json:"conns"`
	// Packets and Bytes count the datagrams forwarded (bytes of WireGuard
	// datagrams, without framing) to the nodes attached to this
	// coordinator, those that came through another replica included:
	// over replicas, their sums count each datagram once.
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	// DroppedRate counts datagrams dropped because their sender exceeded
	// its rate; DroppedQueue because the destination's queue was full (in
	// datagrams or in bytes);
	// DroppedNoPeer because the destination is not connected or not a
	// peer of the sender.
	DroppedRate   uint64 `json:"dropped_rate"`
	DroppedQueue  uint64 `json:"dropped_queue"`
	DroppedNoPeer uint64 `json:"dropped_no_peer"`
	// DroppedTooLarge counts datagrams over MaxRelayDatagram.
	DroppedTooLarge uint64 `json:"dropped_too_large"`
	// STUNRequests counts endpoint-discovery probes answered.
	STUNRequests uint64 `json:"stun_requests"`
	// ForwardedOut counts datagrams this replica sent on to the replica
	// their destination is attached to; ForwardedIn those it received
	// from other replicas and queued for a node attached here.
	// DroppedReplica counts datagrams for a node attached to another
	// replica that could not be sent there (no connection to it, or its
	// queue was full). All three stay zero on a lone coordinator.
	ForwardedOut   uint64 `json:"forwarded_out,omitempty"`
	ForwardedIn    uint64 `json:"forwarded_in,omitempty"`
	DroppedReplica uint64 `json:"dropped_replica,omitempty"`
}

// EndpointsUpdate is the body of PUT /api/v1/nodes/self/endpoints: the
// UDP endpoints the calling node can be reached on now, replacing those it
// published before. The coordinator passes them on as Peer.Endpoints.
type EndpointsUpdate struct {
	Endpoints []netip.AddrPort `json:"endpoints"`
}

// ---- Probes ----
//
// Probes travel on a node's WireGuard UDP socket, beside WireGuard
// messages, and are told apart by their first four bytes: a WireGuard
// message starts with its type (1 to 4) and three zero bytes, a probe with
// ProbeMagic. A node pings a peer's candidate endpoints to find a direct
// path (and to punch holes in NATs on the way); the peer answers with a
// pong that echoes the ping's transaction id. The coordinator answers pings
// on its discovery port (RegisterResponse.STUN) the same way, which tells a
// node the address and port its NAT maps it to.
//
// Every probe has the same length, so an answer is never larger than the
// question that caused it.
//
//	magic (4) | type (1) | txid (12) | key (32) | observed ip (16) | observed port (2) | mac (16)
//
// Between peers the MAC authenticates everything before it with a key both
// ends derive from their WireGuard keys (the node package computes it), so
// nobody else can claim to be a peer, offer an address as its direct path,
// or answer for it. The coordinator's discovery pongs carry a zero key and
// no MAC.

// ProbeMagic starts every probe.
const ProbeMagic = "\xc1prb"

// ProbeLen is the length of every probe.
const ProbeLen = 4 + 1 + 12 + 32 + 16 + 2 + ProbeMACLen

// ProbeMACLen is the length of a probe's MAC, its last bytes.
const ProbeMACLen = 16

// ProbeType is the kind of a probe.
type ProbeType byte

const (
	ProbePing ProbeType = 1
	ProbePong ProbeType = 2
)

// Probe is a direct-path probe.
type Probe struct {
	Type ProbeType
	// TxID is chosen at random by the pinger and echoed by the pong.
	TxID [12]byte
	// Key is the sender's WireGuard public key; zero from the coordinator.
	Key Key
	// Observed, in a pong, is the source address the ping came from.
	Observed netip.AddrPort
	// MAC authenticates a probe between peers; zero from the coordinator.
	MAC [ProbeMACLen]byte
}

// IsProbe reports whether a datagram is a probe rather than a WireGuard
// message.
func IsProbe(b []byte) bool {
	return len(b) >= len(ProbeMagic) && string(b[:len(ProbeMagic)]) == ProbeMagic
}

// AppendBinary appends the probe's wire form to b.
func (p *Probe) AppendBinary(b []byte) ([]byte, error) {
	b = append(b, ProbeMagic...)
	b = append(b, byte(p.Type))
	b = append(b, p.TxID[:]...)
	b = append(b, p.Key[:]...)
	var ip [16]byte
	if p.Observed.IsValid() {
		ip = p.Observed.Addr().As16()
	}
	b = append(b, ip[:]...)
	b = binary.BigEndian.AppendUint16(b, p.Observed.Port())
	return append(b, p.MAC[:]...), nil
}

// ParseProbe parses a probe. It reports false for anything that is not a
// well-formed probe.
func ParseProbe(b []byte) (Probe, bool) {
	var p Probe
	if len(b) != ProbeLen || !IsProbe(b) {
		return p, false
	}
	b = b[len(ProbeMagic):]
	p.Type = ProbeType(b[0])
	if p.Type != ProbePing && p.Type != ProbePong {
		return p, false
	}
	b = b[1:]
	copy(p.TxID[:], b)
	b = b[len(p.TxID):]
	copy(p.Key[:], b)
	b = b[len(p.Key):]
	ip := netip.AddrFrom16([16]byte(b[:16])).Unmap()
	if port := binary.BigEndian.Uint16(b[16:]); port != 0 && !ip.IsUnspecified() {
		p.Observed = netip.AddrPortFrom(ip, port)
	}
	copy(p.MAC[:], b[18:])
	return p, true
}
