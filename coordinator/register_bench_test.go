package coordinator

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// BenchmarkRegisterNode measures one registration as the coordinator
// makes it: the global lock held through the store's transaction and its
// disk sync (see Server.guarded). Its rate bounds how many registrations
// a second the coordinator takes, and how long each holds everyone else
// off.
func BenchmarkRegisterNode(b *testing.B) {
	s := newBareServer(b)
	c := &cluster{ID: "cls_bench", Name: "bench", JoinTokenHash: hashSecret("cjt_bench")}
	if err := s.store.Update(func(tx store.Tx) error { return store.Put(tx, store.Clusters, c.ID, c) }); err != nil {
		b.Fatal(err)
	}
	s.indexCluster(c)
	authorize := func(now time.Time) (string, *proto.Problem) { return "bench", nil }
	b.ResetTimer()
	for b.Loop() {
		var k proto.Key
		rand.Read(k[:])
		n := &node{ID: newID("agt"), Kind: proto.KindAgent, Key: k, TokenHash: hashSecret(newSecret("cnt_")), ClusterID: c.ID}
		if _, p := s.registerNode(n, authorize, nil); p != nil {
			b.Fatalf("register: %+v", p)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registrations/s")
}
