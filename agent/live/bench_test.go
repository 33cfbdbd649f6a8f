package live

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

// BenchmarkFanout: 1,000 viewers of 100 identities follow a Source of
// 1,000 pods in 10 namespaces (reviews answered by a fake, cached as in
// the agent); each iteration changes one pod and waits until every
// viewer has decoded the change. It reports the 99th percentile and the
// maximum of the per-viewer delivery time (live_fanout_p99_ms,
// live_fanout_max_ms) and the heap the viewers' streams take
// (live_heap_mib_1000_viewers), and what the 1,000 first snapshots
// allocated, garbage included (live_sync_alloc_mib_1000_viewers): the
// heap's peak follows it. Without the network and TLS of the mesh, it
// measures the agent's own share.
func BenchmarkFanout(b *testing.B) {
	const viewers, identities, namespaces = 1000, 100, 10
	s := newTestSource(b, 0)
	for i := range 1000 {
		upsert(s, fmt.Sprintf("ns%d", i%namespaces), fmt.Sprintf("p%d", i))
	}
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var (
		target  atomic.Uint64 // the revision being waited for
		start   atomic.Int64  // when it was made, in ns
		pending atomic.Int64  // viewers that do not have it yet
		mu      sync.Mutex
		samples []time.Duration
		synced  sync.WaitGroup
	)
	done := make(chan struct{}, 1)
	synced.Add(viewers)
	for i := range viewers {
		id := Identity{User: fmt.Sprintf("user%d", i%identities), Groups: []string{"dev"}}
		may := func(ctx context.Context, k Kind, ns string) (bool, error) {
			return s.Allowed(ctx, id, "list", k.GVR.Group, k.GVR.Resource, ns)
		}
		pr, pw := io.Pipe()
		wg.Go(func() { pw.CloseWithError(s.Stream(ctx, pw, nil, proto.LiveCursor{}, may)) })
		wg.Go(func() {
			first := true
			Decode(pr, func(e proto.LiveEvent) error {
				if e.Type == proto.LiveSynced && first {
					first = false
					synced.Done()
				}
				if e.Type == proto.LiveUpsert && e.Rev == target.Load() {
					d := time.Duration(time.Now().UnixNano() - start.Load())
					mu.Lock()
					samples = append(samples, d)
					mu.Unlock()
					if pending.Add(-1) == 0 {
						done <- struct{}{}
					}
				}
				return nil
			})
		})
	}
	b.Cleanup(func() { cancel(); wg.Wait() })
	synced.Wait()
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)

	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		k, raw := pod(fmt.Sprintf("ns%d", i%namespaces), fmt.Sprintf("p%d", i%1000))
		pending.Store(viewers)
		s.mu.Lock()
		target.Store(s.rev + 1)
		s.mu.Unlock()
		start.Store(time.Now().UnixNano())
		s.apply(k, raw, false)
		<-done
	}
	b.StopTimer()
	slices.Sort(samples)
	if len(samples) > 0 {
		b.ReportMetric(float64(samples[len(samples)*99/100])/1e6, "live_fanout_p99_ms")
		b.ReportMetric(float64(samples[len(samples)-1])/1e6, "live_fanout_max_ms")
	}
	b.ReportMetric(float64(int64(after.HeapInuse)-int64(before.HeapInuse))/(1<<20), "live_heap_mib_1000_viewers")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/(1<<20), "live_sync_alloc_mib_1000_viewers")
}
