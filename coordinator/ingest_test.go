package coordinator

import (
	"net/http"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// TestAuditIngestRechecksAgentAtWrite: an agent's audit batch whose
// headers carried a valid node token, and whose body arrives after the
// agent was removed (its cluster's join token revoked, the cluster
// deleted), is refused with 401 and stores nothing: no event, no spool
// sequence. The same slow batch from an agent that stays registered is
// stored.
func TestAuditIngestRechecksAgentAtWrite(t *testing.T) {
	for _, tc := range []struct {
		name     string
		revoke   func(e *registerEnv)
		wantHTTP int
	}{
		{"no revocation", func(*registerEnv) {}, http.StatusOK},
		{"after revoke-token", func(e *registerEnv) {
			e.must("POST", "/api/v1/clusters/prod/revoke-token", e.admin.Token, nil, nil)
		}, http.StatusUnauthorized},
		{"after cluster delete", func(e *registerEnv) {
			e.must("DELETE", "/api/v1/clusters/prod", e.admin.Token, nil, nil)
		}, http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRegisterEnv(t)
			agent := e.registerAgent(e.joinToken, "slow")
			batch := proto.AuditBatch{Source: "slowspool", Events: []proto.AuditEvent{{
				Code: proto.AuditRequest, Time: time.Now(), Actor: "alice@example.com", SourceSeq: 1,
				Resource: &proto.AuditResource{Verb: "list", Resource: "pods"}, Status: 200,
			}}}
			sr := startSlow(t, e.srv.Handler(), "POST", "/api/v1/audit/events", agent.NodeToken, batch)
			tc.revoke(e)
			st, p := sr.finish()
			if st != tc.wantHTTP {
				t.Fatalf("batch straddling the change = %d %+v, want %d", st, p, tc.wantHTTP)
			}
			if st == http.StatusUnauthorized && p.Code != proto.CodeUnauthenticated {
				t.Errorf("refusal code = %s, want %s", p.Code, proto.CodeUnauthenticated)
			}

			stored, sources := 0, 0
			err := e.srv.store.View(func(tx store.Tx) error {
				evs, err := store.List[proto.AuditEvent](tx, store.Audit)
				for _, ev := range evs {
					if ev.Source == batch.Source {
						stored++
					}
				}
				if err != nil {
					return err
				}
				return tx.ForEach(store.AuditSource, func(string, []byte) error { sources++; return nil })
			})
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			if tc.wantHTTP == http.StatusOK {
				want = 1
			}
			if stored != want || sources != want {
				t.Errorf("stored %d events and %d spool sequences of the batch, want %d", stored, sources, want)
			}
		})
	}
}
