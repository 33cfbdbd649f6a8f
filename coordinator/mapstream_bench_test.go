package coordinator

import (
	"bufio"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// BenchmarkMapStreamMemory measures what an open, idle map stream costs
// the coordinator: each iteration opens mapStreams streams through Serve,
// one per agent, as nodes do, reads their snapshots, compares the heap
// and goroutine stacks in use with before, and closes them. The client
// side holds only its connections (no goroutine per stream), so the
// growth is the coordinator's. The budget (docs/design.md §5) is 20 KiB
// a connected node, resident.
func BenchmarkMapStreamMemory(b *testing.B) {
	const mapStreams = 2000
	s := newBareServer(b)
	addr := serve(b, s, "tcp")
	c := benchCluster(b, s)
	tokens := make([]string, mapStreams)
	for i := range tokens {
		var k proto.Key
		rand.Read(k[:])
		tokens[i] = newSecret("cnt_")
		n := &node{ID: newID("agt"), Kind: proto.KindAgent, Key: k, TokenHash: hashSecret(tokens[i]), ClusterID: c.ID}
		authorize := func(now time.Time) (string, *proto.Problem) { n.LastSeen = now; return "bench", nil }
		if _, p := s.registerNode(n, authorize, nil); p != nil {
			b.Fatalf("register: %+v", p)
		}
	}
	var grew memUse
	for b.Loop() {
		before := streamMemory()
		conns := make([]net.Conn, 0, mapStreams)
		for _, tok := range tokens {
			conns = append(conns, openMapStream(b, addr, tok))
		}
		b.StopTimer()
		after := streamMemory()
		grew.heap += after.heap - before.heap
		grew.stack += after.stack - before.stack
		grew.goroutines += after.goroutines - before.goroutines
		for _, c := range conns {
			c.Close()
		}
		testkit.WaitFor(b, "every map stream closed", func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return len(s.clients) == 0
		})
		b.StartTimer()
	}
	streams := float64(b.N * mapStreams)
	b.ReportMetric(float64(grew.heap)/streams, "heap-B/stream")
	b.ReportMetric(float64(grew.stack)/streams, "stack-B/stream")
	b.ReportMetric(float64(grew.goroutines)/streams, "goroutines/stream")
}

// openMapStream opens the map stream of the node with token at addr and
// returns its connection once the snapshot is read.
func openMapStream(b *testing.B, addr, token string) net.Conn {
	b.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	req := "GET " + proto.APIVersion + "/map HTTP/1.1\r\nHost: " + addr + "\r\nAuthorization: Bearer " + token + "\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		b.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		b.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		b.Fatalf("map stream: %s: %s", resp.Status, body)
	}
	if _, err := bufio.NewReader(resp.Body).ReadSlice('\n'); err != nil { // the snapshot
		b.Fatal(err)
	}
	return c
}

type memUse struct{ heap, stack, goroutines int64 }

// streamMemory returns the heap and stacks in use after a collection.
func streamMemory() memUse {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memUse{heap: int64(ms.HeapInuse), stack: int64(ms.StackInuse), goroutines: int64(runtime.NumGoroutine())}
}
