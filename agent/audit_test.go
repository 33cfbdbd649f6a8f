package agent

import (
	"net/http"
	"strings"
	"testing"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

func newAuditHarness(t *testing.T, upstream http.Handler) (*harness, <-chan proto.AuditEvent) {
	t.Helper()
	events := make(chan proto.AuditEvent, 16)
	h := newHarness(t, upstream, func(c *ProxyConfig) { c.Audit = func(e proto.AuditEvent) { events <- e } })
	return h, events
}

func TestAuditEvents(t *testing.T) {
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "secrets") {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		w.Write([]byte("hello"))
	})
	h, events := newAuditHarness(t, up)
	tests := []struct {
		name   string
		setup  func()
		path   string
		want   proto.AuditEvent
		status int
	}{
		{"served", nil, "/apis/apps/v1/namespaces/default/deployments/web", proto.AuditEvent{
			Code: proto.AuditRequest, Outcome: proto.OutcomeSuccess, Status: 200, Bytes: 5,
			Resource: &proto.AuditResource{Verb: "get", APIGroup: "apps", Resource: "deployments", Namespace: "default", Name: "web", Path: "/apis/apps/v1/namespaces/default/deployments/web"},
		}, 200},
		{"apiserver refuses", nil, "/api/v1/namespaces/kube-system/secrets", proto.AuditEvent{
			Code: proto.AuditRequestFailed, Outcome: proto.OutcomeFailure, Status: 403,
			Resource: &proto.AuditResource{Verb: "list", Resource: "secrets", Namespace: "kube-system", Path: "/api/v1/namespaces/kube-system/secrets"},
		}, 403},
		{"proxy refuses", func() { h.peers.set(loopback, device(1, "alice@example.com")) }, "/api/v1/pods", proto.AuditEvent{
			Code: proto.AuditProxyDenied, Outcome: proto.OutcomeDenied, Status: 403, Error: proto.CodeNoRoleAssignment,
			Resource: &proto.AuditResource{Verb: "list", Resource: "pods", Path: "/api/v1/pods"},
		}, 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup()
			}
			resp, _ := h.get(tt.path)
			if resp.StatusCode != tt.status {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tt.status)
			}
			e := testkit.Recv(t, events, "the audit event")
			if e.Code != tt.want.Code || e.Outcome != tt.want.Outcome || e.Status != tt.want.Status || e.Error != tt.want.Error ||
				e.Actor != "alice@example.com" || e.Cluster != "prod" || *e.Resource != *tt.want.Resource || e.Latency <= 0 {
				t.Fatalf("event = %+v %+v\nwant    %+v %+v", e, e.Resource, tt.want, tt.want.Resource)
			}
			if tt.want.Bytes != 0 && e.Bytes != tt.want.Bytes {
				t.Fatalf("bytes = %d, want %d", e.Bytes, tt.want.Bytes)
			}
			if id := resp.Header.Get(proto.HeaderRequestID); id == "" || id != e.Correlation {
				t.Fatalf("correlation %q, response header %q", e.Correlation, id)
			}
		})
	}
}

func TestAuditStreamStartAndEnd(t *testing.T) {
	h, events := newAuditHarness(t, newEchoUpgrade(t))
	c := openUpgrade(t, h, "SPDY/3.1")
	start := testkit.Recv(t, events, "the stream start event")
	if start.Code != proto.AuditStreamStarted || start.Resource.Subresource != "exec" || start.Resource.Name != "p" || start.Actor != "alice@example.com" {
		t.Fatalf("start = %+v %+v", start, start.Resource)
	}
	c.Close()
	end := testkit.Recv(t, events, "the stream end event")
	if end.Code != proto.AuditStreamEnded || end.Correlation != start.Correlation || end.Status != http.StatusSwitchingProtocols {
		t.Fatalf("end = %+v, start correlation %s", end, start.Correlation)
	}
}
