package coordinator

import (
	"log/slog"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/clustral/clustral/proto"
)

// BenchmarkRelayForward is one datagram through the relay between two
// nodes attached to the same coordinator, their peering decision cached:
// the path a lone coordinator takes for every relayed datagram.
func BenchmarkRelayForward(b *testing.B) {
	var srcKey, dstKey proto.Key
	srcKey[0], dstKey[0] = 1, 2
	s := &Server{now: time.Now, log: slog.New(slog.DiscardHandler)}
	s.state.init()
	rl := &relay{s: s, conns: map[proto.Key]*relayConn{}, rate: rate.Inf, queue: 1024, queueBytes: 1 << 40}
	src := &relayConn{key: srcKey, lim: rate.NewLimiter(rate.Inf, 0),
		allowed: map[proto.Key]allowEntry{dstKey: {ok: true, until: time.Now().Add(time.Hour)}}}
	dst := &relayConn{key: dstKey, out: make(chan *[]byte, 1024)}
	rl.conns[srcKey], rl.conns[dstKey] = src, dst
	done := make(chan struct{})
	go func() {
		defer close(done)
		for f := range dst.out {
			dst.queued.Add(-int64(len(*f)))
			putFrame(f)
		}
	}()
	pkt := make([]byte, 1400)
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		rl.forward(src, dstKey, pkt)
	}
	b.StopTimer()
	close(dst.out)
	<-done
	if rl.packets.Load() == 0 {
		b.Fatal("nothing forwarded")
	}
}
