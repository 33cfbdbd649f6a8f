package audit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	commonv1 "go.opentelemetry.io/proto/otlp/common/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// TestTraceThroughMesh: alice lists configmaps through the mesh with a
// sampled traceparent, as a traced client would. The apiserver (tracing
// into suite.Traces) records the request under her trace id, as a child
// of the agent's span, not of hers; the agent's request log line names
// that span, the trace id and the correlation id; and the request's audit
// event, which clustral audit --search <trace id> finds, carries the trace
// id.
func TestTraceThroughMesh(t *testing.T) {
	m := newMesh(t)
	agent := startAgent(t, m.JoinToken, t.TempDir())
	m.alice.MustUp()
	ns := suite.NewNamespace(t)

	traceID, clientSpan := randomHex(t, 16), randomHex(t, 8)
	cfg := m.alice.RESTConfig()
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

	// The apiserver's spans of the request, and their parents.
	var parents []string
	harness.MustEventually(t, 30*time.Second, func(context.Context) error {
		parents = parents[:0]
		for _, s := range suite.Traces.Spans(traceID) {
			if p := hex.EncodeToString(s.GetParentSpanId()); p != "" {
				parents = append(parents, p)
			}
		}
		if len(parents) == 0 {
			return errors.New("the apiserver exported no span of the trace yet")
		}
		return nil
	})
	agentSpan := ""
	for _, p := range parents {
		if p == clientSpan {
			t.Errorf("an apiserver span's parent is the client's span %s: the agent took no span id of its own", clientSpan)
		}
		if agentLogHas(t, agent, "trace_id="+traceID+" span_id="+p) {
			agentSpan = p
		}
	}
	if agentSpan == "" {
		t.Errorf("no apiserver span of trace %s has a parent that the agent's request log line names (parents %q)", traceID, parents)
	}

	// The request's audit event, found by its trace id.
	evs := m.waitEvents(t, url.Values{proto.AuditParamSearch: {traceID}}, 30*time.Second, func(evs []proto.AuditEvent) bool { return len(evs) > 0 })
	e := evs[0]
	if len(evs) != 1 || e.Code != proto.AuditRequest || e.TraceID != traceID || e.Actor != alice.Email ||
		e.Resource == nil || e.Resource.Resource != "configmaps" || e.Resource.Namespace != ns {
		t.Errorf("events found by trace id %s: %+v, want the one RQ001I of alice's configmaps list in %s", traceID, evs, ns)
	}
	// The apiserver's audit id for the request is the agent's correlation
	// id (Audit-ID, set by the agent): its span names it as audit-id.
	if !slices.ContainsFunc(suite.Traces.Spans(traceID), func(s *tracev1.Span) bool {
		return slices.ContainsFunc(s.GetAttributes(), func(kv *commonv1.KeyValue) bool {
			return kv.GetKey() == "audit-id" && kv.GetValue().GetStringValue() == e.Correlation
		})
	}) {
		t.Errorf("no apiserver span of trace %s has audit-id %s, the agent's correlation id", traceID, e.Correlation)
	}
	if !agentLogHas(t, agent, "correlation="+e.Correlation+" trace_id="+traceID) {
		t.Errorf("the agent's log has no line with correlation %s and trace id %s", e.Correlation, traceID)
	}
	out, _, err := m.Admin.Run(ctx, "audit", "--search", traceID, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `"trace_id":"`+traceID+`"`) {
		t.Errorf("clustral audit --search %s -o json shows no trace_id:\n%s", traceID, out)
	}
}

// traceparentTransport sends every request with one traceparent.
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

// agentLogHas reports whether the agent's log contains s.
func agentLogHas(t *testing.T, a *harness.Agent, s string) bool {
	t.Helper()
	b, err := os.ReadFile(a.Proc.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), s)
}
