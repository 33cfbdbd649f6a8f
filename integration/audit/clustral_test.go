package audit

import (
	"encoding/json"
	"net/url"
	"testing"
	"time"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// startAgent runs an agent whose audit spool is in auditDir, without a
// rate limit.
func startAgent(t *testing.T, joinToken, auditDir string) *harness.Agent {
	t.Helper()
	return suite.StartAgent(t, joinToken, "--audit-dir", auditDir, "--rate-limit-qps", "-1")
}

// testMesh is a harness.Mesh with alice a viewer, logged in.
type testMesh struct {
	*harness.Mesh
	alice *harness.TestUser
}

func newMesh(t *testing.T) *testMesh {
	t.Helper()
	m := &testMesh{Mesh: suite.NewMesh(t), alice: suite.NewUser(t, alice)}
	m.alice.MustLogin()
	m.Assign(t, alice.Email, "viewer")
	return m
}

// events returns every audit event matching q, oldest first.
func (m *testMesh) events(t *testing.T, q url.Values) []proto.AuditEvent {
	t.Helper()
	var out []proto.AuditEvent
	q.Set("order", "asc")
	q.Set("limit", "1000")
	for {
		var p proto.AuditPage
		m.Admin.MustAPI("GET", "/api/v1/audit/events?"+q.Encode(), nil, &p)
		out = append(out, p.Events...)
		if len(p.Events) < 1000 {
			return out
		}
		q.Set("cursor", p.Next)
	}
}

// waitEvents polls until cond holds for the events matching q.
func (m *testMesh) waitEvents(t *testing.T, q url.Values, timeout time.Duration, cond func([]proto.AuditEvent) bool) []proto.AuditEvent {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		evs := m.events(t, cloneQuery(q))
		if cond(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			b, _ := json.Marshal(evs[max(0, len(evs)-3):])
			t.Fatalf("timed out after %s waiting for audit events (%d so far; last: %s)", timeout, len(evs), b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func cloneQuery(q url.Values) url.Values {
	c := url.Values{}
	for k, v := range q {
		c[k] = append([]string(nil), v...)
	}
	return c
}
