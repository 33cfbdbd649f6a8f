// Package audittest fills an audit log for benchmarks: many records,
// chained as the coordinator chains them, written in large transactions.
package audittest

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// User returns the login of the i-th user Fill records.
func User(i int) string { return fmt.Sprintf("user%d@example.com", i) }

// Fill appends n records through auditlog.Append (so the chain and the
// index are those of a real log), perTx records a transaction (a few
// thousand is fastest on bbolt, which splits pages only at the commit): requests
// and denials through the proxy by users User(0) to User(users-1) on ten
// clusters, and now and then a login, dated one step apart from start.
// The records are the same for the same arguments.
func Fill(st store.Store, n, users, perTx int, start time.Time, step time.Duration) error {
	r := rand.New(rand.NewPCG(uint64(n), uint64(users)))
	for done := 0; done < n; {
		batch := min(perTx, n-done)
		err := st.Update(func(tx store.Tx) error {
			for i := range batch {
				seq := done + i
				e := proto.AuditEvent{Code: proto.AuditRequest, Time: start.Add(time.Duration(seq) * step), Actor: User(r.IntN(users)),
					Cluster: fmt.Sprintf("cluster-%d", r.IntN(10)), Status: 200, Bytes: r.Int64N(1 << 16), Latency: proto.Duration(time.Duration(r.IntN(50_000)) * time.Microsecond),
					Resource:    &proto.AuditResource{Verb: "get", APIGroup: "apps", Resource: "deployments", Namespace: "team-a", Name: "web", Path: "/apis/apps/v1/namespaces/team-a/deployments/web"},
					Correlation: fmt.Sprintf("%016x", r.Uint64()), TraceID: fmt.Sprintf("%016x%016x", r.Uint64(), r.Uint64())}
				switch r.IntN(20) {
				case 0:
					e.Code, e.Status, e.Error = proto.AuditProxyDenied, 403, "NO_ROLE_ASSIGNMENT"
				case 1:
					e = proto.AuditEvent{Code: proto.AuditLoginBrowser, Time: e.Time, Actor: e.Actor, Metadata: map[string]string{"device": "laptop"}}
				}
				if _, err := auditlog.Append(tx, e); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("fill the audit log, record %d: %w", done, err)
		}
		done += batch
	}
	return nil
}
