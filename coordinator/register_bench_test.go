package coordinator

import (
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// BenchmarkRegisterNode measures registrations as the coordinator makes
// them, one at a time and from concurrent callers: the global lock taken
// to check and claim, the store's transaction and disk sync without it
// (concurrent ones share one, the store's group commit), and the lock
// again to apply (see registerNode). Its rate bounds how many
// registrations a second the coordinator takes.
func BenchmarkRegisterNode(b *testing.B) {
	for _, callers := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			s := newBareServer(b)
			c := &cluster{ID: "cls_bench", Name: "bench", JoinTokenHash: hashSecret("cjt_bench")}
			if err := s.store.Update(func(tx store.Tx) error { return store.Put(tx, store.Clusters, c.ID, c) }); err != nil {
				b.Fatal(err)
			}
			s.mu.Lock()
			s.indexCluster(c)
			s.mu.Unlock()
			authorize := func(now time.Time) (string, *proto.Problem) { return "bench", nil }
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for range callers {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						var k proto.Key
						rand.Read(k[:])
						n := &node{ID: newID("agt"), Kind: proto.KindAgent, Key: k, TokenHash: hashSecret(newSecret("cnt_")), ClusterID: c.ID}
						if _, p := s.registerNode(n, authorize, nil); p != nil {
							b.Errorf("register: %+v", p)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registrations/s")
		})
	}
}
