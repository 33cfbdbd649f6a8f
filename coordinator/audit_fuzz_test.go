package coordinator

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

var fuzzNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// FuzzAuditBatch feeds arbitrary bodies of POST /api/v1/audit/events
// through what the handler does with them: decode, stamp each event as
// the agent's and append it to the chain. Whatever an agent sends, the
// coordinator must not panic, and what it stores must be stamped with the
// agent's identity, dated no later than the skew allows, decode to what
// was hashed, and verify.
func FuzzAuditBatch(f *testing.F) {
	for _, s := range []string{
		`{"source":"spool1","events":[{"code":"RQ001I","time":"2026-06-01T11:59:00Z","actor":"alice@example.com","source_seq":1,"resource":{"verb":"get","resource":"pods","namespace":"dev","name":"web","path":"/api/v1/namespaces/dev/pods/web"},"status":200,"bytes":512,"latency":"1.5ms"}]}`,
		`{"source":"spool1","events":[{"code":"DN001W","time":"2029-06-01T00:00:00Z","actor":"system","source_seq":2,"error":"NO_ROLE_ASSIGNMENT","metadata":{"agent":"agt_x","agent_time":"x"}}]}`,
		`{"source":"s","events":[{"code":"AG006E","time":"0001-01-01T00:00:00+23:59","source_seq":3,"metadata":{"dropped":"10"}}]}`,
		`{"source":"s","events":[{"code":"RQ003I","time":"9999-12-31T23:59:59-23:59","actor":"agent:other","source_seq":4,"cluster":"forged","seq":7,"hash":"00","prev_hash":"11"}]}`,
		`{"source":"s","events":[{"code":"RL001I","source_seq":5}]}`,
		`{"source":"s","events":[{"code":"RQ002W","time":"1969-12-31T23:59:59Z","actor":"\u00ff\ufffd","source_seq":6,"latency":"-5s"}]}`,
		`{"source":"s","events":[]}`,
		`{"events":[{"source_seq":1}]}`,
		`not json`,
	} {
		f.Add([]byte(s))
	}
	a := agentStamp{node: "agt_0123456789abcdef0123", cluster: "prod", source: "spool1"}
	f.Fuzz(func(t *testing.T, body []byte) {
		var b proto.AuditBatch
		if json.Unmarshal(body, &b) != nil {
			return
		}
		st := store.NewMem()
		var stored []proto.AuditEvent
		for _, e := range b.Events {
			got, _, err := stampAgentEvent(e, a, fuzzNow)
			if err != nil {
				var bad errBadBatch
				if !errors.As(err, &bad) {
					t.Fatalf("stamp %+v: %v is not the caller's mistake", e, err)
				}
				continue
			}
			switch {
			case got.Cluster != a.cluster, got.Source != a.source, got.Metadata["agent"] != a.node:
				t.Fatalf("stamped %+v, not with the agent's identity", got)
			case got.Time.After(fuzzNow.Add(auditlog.MaxSkew)), got.Time.Before(minAuditTime):
				t.Fatalf("stamped with time %s", got.Time)
			case got.Actor == "system", got.Actor == "anonymous", strings.HasPrefix(got.Actor, "device:"),
				strings.HasPrefix(got.Actor, "agent:") && got.Actor != "agent:prod":
				t.Fatalf("stamped with actor %q", got.Actor)
			case got.Seq != 0, got.Hash != "", got.PrevHash != "":
				t.Fatalf("chain fields kept: %+v", got)
			}
			err = st.Update(func(tx store.Tx) error {
				e, err := auditlog.Append(tx, got)
				stored = append(stored, e)
				return err
			})
			if err != nil {
				t.Fatalf("append %+v: %v", got, err)
			}
		}
		for _, e := range stored {
			var back proto.AuditEvent
			var raw []byte
			st.View(func(tx store.Tx) error { raw, _ = tx.GetRaw(store.Audit, auditlog.Key(e.Seq)); return nil })
			if err := json.Unmarshal(raw, &back); err != nil {
				t.Fatalf("stored record %s does not decode: %v", raw, err)
			}
			if proto.AuditHash(back) != e.Hash {
				t.Fatalf("stored record %s does not hash to %s", raw, e.Hash)
			}
		}
		if v, err := auditlog.Verify(st, auditlog.VerifyOptions{}); err != nil || !v.OK || v.Checked != len(stored) {
			t.Fatalf("verify after %d appends = %+v, %v", len(stored), v, err)
		}
	})
}
