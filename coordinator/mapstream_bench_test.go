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

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// BenchmarkMapStreamMemory measures what an open, idle map stream costs
// the coordinator: b.N agents each open one through Serve, as nodes do,
// and read their snapshot; then the heap and goroutine stacks in use are
// compared with before. The client side holds only its connections (no
// goroutine per stream), so the growth is the coordinator's. The budget
// (docs/design.md §5) is 20 KiB a connected node, resident.
func BenchmarkMapStreamMemory(b *testing.B) {
	s := newBareServer(b)
	addr := serve(b, s, "tcp")
	c := &cluster{ID: "cls_bench", Name: "bench", JoinTokenHash: hashSecret("cjt_bench")}
	if err := s.store.Update(func(tx store.Tx) error { return store.Put(tx, store.Clusters, c.ID, c) }); err != nil {
		b.Fatal(err)
	}
	s.mu.Lock()
	s.indexCluster(c)
	s.mu.Unlock()
	tokens := make([]string, b.N)
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
	before := streamMemory()
	b.ResetTimer()
	conns := make([]net.Conn, 0, b.N)
	b.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for _, tok := range tokens {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
		req := "GET " + proto.APIVersion + "/map HTTP/1.1\r\nHost: " + addr + "\r\nAuthorization: Bearer " + tok + "\r\n\r\n"
		if _, err := c.Write([]byte(req)); err != nil {
			b.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
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
	}
	b.StopTimer()
	after := streamMemory()
	b.ReportMetric(float64(after.heap-before.heap)/float64(b.N), "heap-B/stream")
	b.ReportMetric(float64(after.stack-before.stack)/float64(b.N), "stack-B/stream")
	b.ReportMetric(float64(after.goroutines-before.goroutines)/float64(b.N), "goroutines/stream")
}

type memUse struct{ heap, stack, goroutines int64 }

// streamMemory returns the heap and stacks in use after a collection.
func streamMemory() memUse {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memUse{heap: int64(ms.HeapInuse), stack: int64(ms.StackInuse), goroutines: int64(runtime.NumGoroutine())}
}
