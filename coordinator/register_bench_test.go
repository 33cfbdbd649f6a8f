package coordinator

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/testkit"
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
			c := benchCluster(b, s)
			authorize := func(now time.Time) (string, *proto.Problem) { return "bench", nil }
			var next atomic.Int64
			var wg sync.WaitGroup
			cpu := startCPU(b)
			for range callers {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						var k proto.Key
						rand.Read(k[:])
						n := &node{ID: s.newID("agt"), Kind: proto.KindAgent, Key: k, TokenHash: hashSecret(newSecret("cnt_")), ClusterID: c.ID}
						if _, p := s.registerNode(n, authorize, nil); p != nil {
							b.Errorf("register: %+v", p)
							return
						}
					}
				})
			}
			wg.Wait()
			cpu.report()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registrations/s")
		})
	}
}

// benchCluster stores and indexes the cluster "bench" in s.
func benchCluster(b *testing.B, s *Server) *cluster {
	b.Helper()
	c := &cluster{ID: "cls_bench", Name: "bench", JoinTokenHash: hashSecret("cjt_bench")}
	if err := s.store.Update(func(tx store.Tx) error { return store.Put(tx, store.Clusters, c.ID, c) }); err != nil {
		b.Fatal(err)
	}
	s.mu.Lock()
	s.indexCluster(c)
	s.mu.Unlock()
	return c
}

// BenchmarkRegisterDeviceHTTP measures device registrations as a fleet
// makes them: 32 concurrent callers POST /api/v1/devices through Serve,
// each with a user's session token (checked when the headers arrive and
// at the write), on keep-alive connections. With the CPU profile it shows
// what a registration costs besides its share of a disk sync.
func BenchmarkRegisterDeviceHTTP(b *testing.B) {
	const callers, users = 32, 100
	s := newBareServer(b)
	s.cfg.MaxDevicesPerUser = 1 << 20
	addr := serve(b, s, "tcp")
	now := s.now()
	tokens := make([]string, users)
	for i := range users {
		u := &user{ID: newID("usr"), Login: fmt.Sprintf("user-%03d@example.com", i), Created: now}
		u.Subject, u.Email = u.ID, u.Login
		sid := newSecret("cs_")
		se := &session{IDHash: hashSecret(sid), UserID: u.ID, Created: now, Expires: now.Add(time.Hour)}
		err := s.store.Update(func(tx store.Tx) error {
			if err := store.Put(tx, store.Users, u.ID, u); err != nil {
				return err
			}
			return store.Put(tx, store.Sessions, se.IDHash, se)
		})
		if err != nil {
			b.Fatal(err)
		}
		s.mu.Lock()
		s.indexUser(u)
		s.sessions[se.IDHash] = se
		s.mu.Unlock()
		if tokens[i], err = s.signSession(u, sid, se.Expires); err != nil {
			b.Fatal(err)
		}
	}
	tr := &http.Transport{MaxIdleConnsPerHost: callers}
	b.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}
	register := func(i int64) error {
		var k proto.Key
		rand.Read(k[:])
		body, _ := json.Marshal(proto.RegisterDeviceRequest{PublicKey: k, Hostname: "bench"})
		req, _ := http.NewRequest("POST", "http://"+addr+proto.APIVersion+"/devices", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tokens[i%users])
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("register: %s", resp.Status)
		}
		return nil
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	cpu := startCPU(b)
	for range callers {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				if err := register(i); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	cpu.report()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registrations/s")
}

// cpuClock measures the CPU time the test process spends (user and
// system, every thread) over a benchmark's loop: on a shared machine
// steadier than its rate.
type cpuClock struct {
	b     *testing.B
	start time.Duration
}

// startCPU resets b's timer and starts measuring the process's CPU.
func startCPU(b *testing.B) cpuClock {
	b.ResetTimer()
	return cpuClock{b, testkit.CPUTime()}
}

// report reports the CPU spent since startCPU per operation, as
// cpu-µs/op.
func (c cpuClock) report() {
	c.b.ReportMetric(float64((testkit.CPUTime()-c.start).Microseconds())/float64(c.b.N), "cpu-µs/op")
}
