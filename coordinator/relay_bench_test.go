package coordinator

import (
	"bufio"
	"log/slog"
	"net"
	"sync/atomic"
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

// BenchmarkRelayStream is a stream of 1,400-byte datagrams through the
// relay's read, forward and write loops between two nodes over loopback
// TCP, each side batching as node.relayClient does: the relay hop of a
// bulk transfer between two nodes that cannot reach each other.
func BenchmarkRelayStream(b *testing.B) {
	var srcKey, dstKey proto.Key
	srcKey[0], dstKey[0] = 1, 2
	s := &Server{now: time.Now, log: slog.New(slog.DiscardHandler)}
	s.state.init()
	rl := &relay{s: s, conns: map[proto.Key]*relayConn{}, rate: rate.Inf, queue: 1 << 16, queueBytes: 1 << 40}
	srcNode, srcRelay := tcpPair(b)
	dstRelay, dstNode := tcpPair(b)
	src := &relayConn{key: srcKey, conn: srcRelay, done: make(chan struct{}), lim: rate.NewLimiter(rate.Inf, 0),
		allowed: map[proto.Key]allowEntry{dstKey: {ok: true, until: time.Now().Add(time.Hour)}}}
	dst := &relayConn{key: dstKey, conn: dstRelay, out: make(chan *[]byte, rl.queue), done: make(chan struct{})}
	rl.conns[srcKey], rl.conns[dstKey] = src, dst
	// Buffered as handleRelay buffers a hijacked connection, behind the
	// HTTP server's 4 KiB reader.
	relayR, _ := relayBuffers(srcRelay, bufio.NewReader(srcRelay))
	_, relayW := relayBuffers(dstRelay, bufio.NewReader(dstRelay))
	go rl.read(src, relayR)
	go rl.write(dst, relayW)
	b.Cleanup(func() { src.close(); dst.close() })

	// The sender keeps at most window datagrams in flight, as the
	// tunnel's TCP would: an unpaced stream measures the relay's queue.
	const window = 4096
	received := make(chan int, 1)
	progress := make(chan struct{}, 1)
	var want, got atomic.Int64
	go func() {
		br := bufio.NewReaderSize(dstNode, 64<<10)
		buf := make([]byte, proto.RelayFrameHeaderLen+proto.MaxRelayPayload)
		n := 0
		for {
			typ, _, err := proto.ReadRelayFrame(br, buf)
			if err != nil {
				return
			}
			if typ != proto.RelayFramePacket {
				continue
			}
			n++
			got.Store(int64(n))
			if n%256 == 0 {
				select {
				case progress <- struct{}{}:
				default:
				}
			}
			if int64(n) == want.Load() {
				received <- n
			}
		}
	}()
	pkt := make([]byte, 1400)
	frame := proto.AppendRelayPacket(nil, dstKey, pkt)
	bw := bufio.NewWriterSize(srcNode, 64<<10)
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	want.Store(int64(b.N))
	for i := range b.N {
		bw.Write(frame)
		if i%32 == 31 || i == b.N-1 {
			if err := bw.Flush(); err != nil {
				b.Fatal(err)
			}
			for int64(i)-got.Load() > window {
				select {
				case <-progress:
				case <-time.After(time.Minute):
					b.Fatalf("relayed %d of %d datagrams (dropped %d on a full queue)", rl.packets.Load(), i+1, rl.droppedQueue.Load())
				}
			}
		}
	}
	select {
	case <-received:
	case <-time.After(time.Minute):
		b.Fatalf("relayed %d of %d datagrams (dropped %d on a full queue)", rl.packets.Load(), b.N, rl.droppedQueue.Load())
	}
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	c := <-accepted
	if c == nil {
		tb.Fatal("accept failed")
	}
	tb.Cleanup(func() { a.Close(); c.Close() })
	return a, c
}
