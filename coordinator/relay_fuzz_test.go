package coordinator

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"log/slog"
	"net"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/clustral/clustral/proto"
)

// deadlineConn is a net.Conn whose deadlines do nothing; the relay's read
// loop sets read deadlines.
type deadlineConn struct{ net.Conn }

func (deadlineConn) SetReadDeadline(time.Time) error { return nil }

// FuzzRelayRead feeds a node's relay connection arbitrary bytes, as a
// hostile node could send, through the coordinator's read loop towards a
// destination that never drains. Whatever the bytes: no panic; every
// queued frame carries the sender's own key and a datagram no larger than
// proto.MaxRelayDatagram; the destination's queue stays within its bounds
// in datagrams and bytes, and its byte count matches what it holds.
func FuzzRelayRead(f *testing.F) {
	var srcKey, dstKey proto.Key
	for i := range dstKey {
		srcKey[i], dstKey[i] = 0xaa, byte(i+1)
	}
	pkt := func(k proto.Key, n int) []byte { return proto.AppendRelayPacket(nil, k, bytes.Repeat([]byte{'d'}, n)) }
	f.Add(pkt(dstKey, 5))
	f.Add(append(pkt(dstKey, proto.MaxRelayDatagram), pkt(dstKey, proto.MaxRelayDatagram+1)...))
	f.Add(bytes.Repeat(pkt(dstKey, 1000), 8))
	f.Add(append(pkt(srcKey, 10), proto.AppendRelayKeepAlive(pkt(dstKey, 10))...))
	f.Add(append([]byte{byte(proto.RelayFramePacket), 0, 0, 0, 32}, dstKey[:]...))
	f.Add(binary.BigEndian.AppendUint32([]byte{byte(proto.RelayFramePacket)}, proto.MaxRelayPayload+1))
	f.Add([]byte{7, 0, 0, 0, 1, 0})

	const queue, queueBytes = 4, 4000
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &Server{now: time.Now, log: slog.New(slog.DiscardHandler)}
		s.state.init()
		rl := &relay{s: s, conns: map[proto.Key]*relayConn{}, rate: rate.Inf, queue: queue, queueBytes: queueBytes}
		src := &relayConn{key: srcKey, conn: deadlineConn{}, lim: rate.NewLimiter(rate.Inf, 0),
			allowed: map[proto.Key]allowEntry{dstKey: {ok: true, until: time.Now().Add(time.Hour)}}}
		dst := &relayConn{key: dstKey, out: make(chan *[]byte, queue), allowed: map[proto.Key]allowEntry{}}
		rl.conns[srcKey], rl.conns[dstKey] = src, dst
		rl.read(src, bufio.NewReader(bytes.NewReader(data)))

		close(dst.out)
		var held int64
		n := 0
		for f := range dst.out {
			frame := *f
			n++
			held += int64(len(frame))
			typ, payload, err := proto.ReadRelayFrame(bytes.NewReader(frame), make([]byte, proto.RelayFrameHeaderLen+proto.MaxRelayPayload))
			if err != nil || typ != proto.RelayFramePacket {
				t.Fatalf("queued frame %x: %v", frame, err)
			}
			k, d, err := proto.ParseRelayPacket(payload)
			if err != nil || k != srcKey || len(d) > proto.MaxRelayDatagram {
				t.Fatalf("queued frame from %x with %d bytes: %v", k, len(d), err)
			}
		}
		if n > queue || held > queueBytes || held != dst.queued.Load() {
			t.Fatalf("queue holds %d frames, %d bytes (counted %d); bounds %d and %d", n, held, dst.queued.Load(), queue, queueBytes)
		}
	})
}
