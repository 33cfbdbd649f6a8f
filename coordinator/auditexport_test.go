package coordinator

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/clustral/clustral/coordinator/auditexport/otlptest"
	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// TestAuditExportWired: a coordinator configured with --audit-export
// streams its audit log to the destination, reports it in its metrics,
// and its retention keeps what the destination has not taken.
func TestAuditExportWired(t *testing.T) {
	rcv := newExportReceiver(t)
	e := newTestEnvWith(t, rcv.configure)
	// Records older than the retention, which the destination has not
	// taken: pruning keeps them while it is down.
	old := time.Now().Add(-2 * DefaultAuditRetention)
	if err := e.srv.store.Update(func(tx store.Tx) error {
		for range 5 {
			if _, err := auditlog.Append(tx, proto.AuditEvent{Code: proto.AuditRequest, Time: old, Actor: "alice@example.com"}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e.srv.pruneAudit()
	var head auditlog.Mark
	e.srv.store.View(func(tx store.Tx) error {
		_, anchor, _ := auditlog.Marks(tx)
		head, _ = auditlog.Head(tx)
		if anchor.Seq != 0 {
			t.Errorf("pruned up to %d while the destination had taken nothing", anchor.Seq)
		}
		return nil
	})
	lag := e.srv.metrics.reg
	testkit.WaitFor(t, "lag metric shows the pending events", func() bool {
		n, err := testutil.GatherAndCount(lag, "clustral_coordinator_audit_export_lag_events")
		return err == nil && n == 1 && metricValue(t, e.srv, "clustral_coordinator_audit_export_lag_events") >= float64(head.Seq)
	})
	rcv.down.Store(false)
	testkit.WaitFor(t, "every event exported in order", func() bool {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		seqs := rcv.seqs
		if len(seqs) < int(head.Seq) {
			return false
		}
		for i, s := range seqs[:head.Seq] {
			if s != int64(i+1) {
				t.Fatalf("exported %v, want 1..%d in order", seqs, head.Seq)
			}
		}
		return true
	})
	testkit.WaitFor(t, "lag back to zero", func() bool {
		return metricValue(t, e.srv, "clustral_coordinator_audit_export_lag_events") == 0
	})
	e.srv.pruneAudit()
	e.srv.store.View(func(tx store.Tx) error {
		if _, anchor, _ := auditlog.Marks(tx); anchor.Seq < 5 {
			t.Errorf("after export, pruned only up to %d", anchor.Seq)
		}
		return nil
	})
}

// exportReceiver is an OTLP receiver for a coordinator's --audit-export,
// down (answering 503) until down is cleared.
type exportReceiver struct {
	srv  *httptest.Server
	down atomic.Bool
	mu   sync.Mutex
	seqs []int64 // the sequence numbers received, in order
	ca   string  // the file of its certificate
}

func newExportReceiver(t *testing.T) *exportReceiver {
	t.Helper()
	x := &exportReceiver{}
	x.down.Store(true)
	x.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if x.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		req, ok := otlptest.Receive(w, r)
		if !ok {
			return
		}
		x.mu.Lock()
		for _, rl := range req.ResourceLogs {
			for _, sl := range rl.ScopeLogs {
				for _, rec := range sl.LogRecords {
					for _, a := range rec.Attributes {
						if a.Key == "clustral.audit.seq" {
							x.seqs = append(x.seqs, a.Value.GetIntValue())
						}
					}
				}
			}
		}
		x.mu.Unlock()
		otlptest.Answer(w, nil)
	}))
	t.Cleanup(x.srv.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: x.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	x.ca = caFile
	return x
}

// configure points c's audit export at x.
func (x *exportReceiver) configure(c *Config) {
	c.AuditExport = []string{"otlp+https://" + x.srv.Listener.Addr().String() + "/v1/logs?name=otel&retry-min=10ms&retry-max=50ms&ca=" + x.ca}
	c.AuditExportPoll = 10 * time.Millisecond
}

// metricValue is the value of the single series of a gauge or counter.
func metricValue(t *testing.T, s *Server, name string) float64 {
	t.Helper()
	mfs, err := s.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			m := mf.Metric[0]
			if m.Gauge != nil {
				return m.Gauge.GetValue()
			}
			return m.Counter.GetValue()
		}
	}
	t.Fatalf("no single series %s", name)
	return 0
}
