package auditlog_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/auditlog/audittest"
	"github.com/clustral/clustral/coordinator/store"
)

// benchRecords is the size of the log the benchmarks query; `make bench`
// measures the console's page on a million (console_audit_page_ms).
const benchRecords = 200_000

// BenchmarkAuditPageByUser reads the first page (50 records, newest
// first) of one user's events out of benchRecords by 1000 users, through
// the index and, for comparison, by scanning the log as Query does
// until the index is built.
func BenchmarkAuditPageByUser(b *testing.B) {
	st, err := store.OpenBolt(filepath.Join(b.TempDir(), "coordinator.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	start := time.Now().Add(-30 * 24 * time.Hour)
	if err := audittest.Fill(st, benchRecords, 1000, 4000, start, time.Second); err != nil {
		b.Fatal(err)
	}
	f := auditlog.Filter{User: audittest.User(7)}
	for _, tt := range []struct {
		name    string
		indexed bool
	}{{"indexed", true}, {"scan", false}} {
		b.Run(tt.name, func(b *testing.B) {
			setIndexed(b, st, tt.indexed)
			for b.Loop() {
				p, err := auditlog.Query(st, &f, "", false, 50)
				if err != nil {
					b.Fatal(err)
				}
				if len(p.Events) == 0 {
					b.Fatal("no events")
				}
			}
		})
	}
}

// setIndexed marks the index of st complete, or pending as if it were
// still being built.
func setIndexed(tb testing.TB, st store.Store, indexed bool) {
	tb.Helper()
	err := st.Update(func(tx store.Tx) error {
		head, err := auditlog.Head(tx)
		if err != nil {
			return err
		}
		pending := head.Seq
		if indexed {
			pending = 0
		}
		return store.Put(tx, store.Meta, auditlog.MetaIndex, map[string]uint64{"pending": pending})
	})
	if err != nil {
		tb.Fatal(err)
	}
}
