package trace

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// TestTraceThroughMesh: alice lists configmaps through the mesh with a
// sampled traceparent. The apiserver records the request under her trace
// id, as a child of the agent's span (not of hers); the agent's request
// log line names that span and the trace id; and the audit event of the
// request, found with clustral audit --search <trace id>, carries the
// trace id. A request without a traceparent gets a trace id of the
// agent's in its audit event.
func TestTraceThroughMesh(t *testing.T) {
	m := suite.NewMesh(t)
	agent := suite.StartAgent(t, m.JoinToken)
	a := suite.NewUser(t, alice)
	a.MustLogin()
	m.Assign(t, alice.Email, "viewer")
	a.MustUp()
	ns := suite.NewNamespace(t)

	traceID, clientSpan := randomHex(t, 16), randomHex(t, 8)
	cfg := a.RESTConfig()
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return traceparentTransport{rt: rt, traceparent: "00-" + traceID + "-" + clientSpan + "-01"}
	})
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("list configmaps through the mesh: %v", err)
	}

	// The apiserver's spans of the request.
	var parents []string
	harness.MustEventually(t, 30*time.Second, func(context.Context) error {
		parents = parents[:0]
		for _, s := range suite.Traces.Spans(traceID) {
			if p := hex.EncodeToString(s.GetParentSpanId()); p != "" {
				parents = append(parents, p)
			}
		}
		if len(parents) == 0 {
			return fmt.Errorf("the apiserver exported no span of trace %s", traceID)
		}
		return nil
	})
	var agentSpan string
	for _, p := range parents {
		if p == clientSpan {
			t.Errorf("an apiserver span's parent is the client's span %s: the agent did not take a span id of its own", clientSpan)
		}
		if agentLogHas(t, agent, "trace_id="+traceID+" span_id="+p) {
			agentSpan = p
		}
	}
	if agentSpan == "" {
		t.Errorf("no apiserver span of trace %s has a parent that the agent's request log line names (parents %q)", traceID, parents)
	}

	// The request's audit event, found by its trace id.
	var ev proto.AuditEvent
	harness.MustEventually(t, 30*time.Second, func(ctx context.Context) error {
		evs, err := auditEvents(ctx, m.Admin, "--search", traceID)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if e.Code == proto.AuditRequest && e.Resource != nil && e.Resource.Resource == "configmaps" && e.Resource.Namespace == ns {
				ev = e
				return nil
			}
		}
		return fmt.Errorf("no RQ001I event of the configmaps list found by trace id %s: %+v", traceID, evs)
	})
	if ev.TraceID != traceID || ev.Actor != alice.Email || ev.Correlation == "" {
		t.Errorf("audit event %+v: want trace id %s, actor %s and a correlation id", ev, traceID, alice.Email)
	}
	if !agentLogHas(t, agent, "correlation="+ev.Correlation+" trace_id="+traceID) {
		t.Errorf("the agent's log has no line with correlation %s and trace id %s", ev.Correlation, traceID)
	}

	// Without a traceparent the agent starts a trace; its audit event
	// names it.
	plain, err := kubernetes.NewForConfig(a.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); err == nil {
		t.Fatal("a viewer listed secrets")
	}
	harness.MustEventually(t, 30*time.Second, func(ctx context.Context) error {
		evs, err := auditEvents(ctx, m.Admin, "--resource", "secrets", "--user", alice.Email)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if e.Resource != nil && e.Resource.Namespace == ns {
				if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(e.TraceID) || e.TraceID == traceID {
					t.Errorf("the secrets event has trace id %q: want one of the agent's", e.TraceID)
				}
				return nil
			}
		}
		return fmt.Errorf("no audit event of the secrets list in %s yet", ns)
	})
}

// traceparentTransport sends every request with a fixed traceparent, as a
// traced client would.
type traceparentTransport struct {
	rt          http.RoundTripper
	traceparent string
}

func (t traceparentTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Traceparent", t.traceparent)
	return t.rt.RoundTrip(r)
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// agentLogHas reports whether a line of the agent's log contains s.
func agentLogHas(t *testing.T, a *harness.Agent, s string) bool {
	t.Helper()
	b, err := os.ReadFile(a.Proc.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), s)
}

// auditEvents runs clustral audit -o json with args as the mesh's admin
// and returns the events.
func auditEvents(ctx context.Context, admin *harness.TestUser, args ...string) ([]proto.AuditEvent, error) {
	out, _, err := admin.Run(ctx, append([]string{"audit", "-o", "json", "--since", "1h"}, args...)...)
	if err != nil {
		return nil, err
	}
	var evs []proto.AuditEvent
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var e proto.AuditEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("clustral audit -o json line %q: %v", sc.Text(), err)
		}
		evs = append(evs, e)
	}
	return evs, sc.Err()
}
