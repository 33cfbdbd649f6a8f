package agent

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// upstreamTraceparent is what the proxy may send: version 00, a trace id,
// a span id and the flags sampled and random, all lowercase hex.
var upstreamTraceparent = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-0([0-3])$`)

const (
	clientTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpan  = "00f067aa0ba902b7"
)

// TestTraceContext sends requests with and without a client trace context
// and checks what the fake apiserver receives, the request's audit event
// and its log line.
func TestTraceContext(t *testing.T) {
	rec := make(recorder, 1)
	events := make(chan proto.AuditEvent, 1)
	h := newHarness(t, rec, func(c *ProxyConfig) { c.Audit = func(e proto.AuditEvent) { events <- e } })

	valid := "00-" + clientTrace + "-" + clientSpan + "-01"
	tests := []struct {
		name      string
		headers   string
		keep      bool   // the client's trace id goes upstream
		flags     string // the flags that go upstream
		state     string // the tracestate that goes upstream
		denyFirst bool   // the proxy refuses the request
	}{
		{"valid sampled", "Traceparent: " + valid + "\r\n", true, "1", "", false},
		{"valid with tracestate", "Traceparent: " + valid + "\r\nTracestate: congo=t61rcWkgMzE,rojo=00f067aa0ba902b7\r\n", true, "1", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", false},
		{"tracestate in two lines", "traceparent: " + valid + "\r\ntracestate: congo=t61rcWkgMzE\r\ntracestate: rojo=00f067aa0ba902b7\r\n", true, "1", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", false},
		{"valid not sampled", "Traceparent: 00-" + clientTrace + "-" + clientSpan + "-00\r\n", true, "0", "", false},
		{"valid, random", "Traceparent: 00-" + clientTrace + "-" + clientSpan + "-03\r\n", true, "3", "", false},
		{"future version with more fields", "Traceparent: 01-" + clientTrace + "-" + clientSpan + "-01-what-comes-next\r\n", true, "1", "", false},
		{"bad tracestate dropped", "Traceparent: " + valid + "\r\nTracestate: no equals sign\r\n", true, "1", "", false},
		{"tracestate without traceparent", "Tracestate: congo=t61rcWkgMzE\r\n", false, "2", "", false},
		{"absent", "", false, "2", "", false},
		{"upper case", "Traceparent: 00-" + strings.ToUpper(clientTrace) + "-" + clientSpan + "-01\r\n", false, "2", "", false},
		{"zero trace id", "Traceparent: 00-" + strings.Repeat("0", 32) + "-" + clientSpan + "-01\r\n", false, "2", "", false},
		{"zero span id", "Traceparent: 00-" + clientTrace + "-" + strings.Repeat("0", 16) + "-01\r\n", false, "2", "", false},
		{"version ff", "Traceparent: ff-" + clientTrace + "-" + clientSpan + "-01\r\n", false, "2", "", false},
		{"version 00 with more fields", "Traceparent: " + valid + "-extra\r\n", false, "2", "", false},
		{"short trace id", "Traceparent: 00-" + clientTrace[2:] + "-" + clientSpan + "-01\r\n", false, "2", "", false},
		{"garbage", "Traceparent: hello\r\nTracestate: congo=t61rcWkgMzE\r\n", false, "2", "", false},
		{"sent twice", "Traceparent: " + valid + "\r\nTraceparent: " + valid + "\r\n", false, "2", "", false},
		{"denied request keeps the client's trace", "Traceparent: " + valid + "\r\nUpgrade: irc/6.9\r\nConnection: Upgrade\r\n", true, "", "", true},
	}
	spans := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := h.dial()
			resp := c.do(t, "GET", "/api/v1/namespaces/default/pods", tt.headers)
			io.Copy(io.Discard, resp.Body)
			e := testkit.Recv(t, events, "the audit event")
			corr := resp.Header.Get(proto.HeaderRequestID)
			if e.Correlation != corr || corr == "" {
				t.Errorf("audit correlation %q, response header %q", e.Correlation, corr)
			}
			if tt.keep && e.TraceID != clientTrace || !tt.keep && (e.TraceID == clientTrace || len(e.TraceID) != 32) {
				t.Errorf("audit trace id %q, client sent %q (keep %v)", e.TraceID, clientTrace, tt.keep)
			}
			h.waitLog(t, "correlation="+corr+" trace_id="+e.TraceID+" span_id=")

			if tt.denyFirst {
				if resp.StatusCode != http.StatusBadRequest || e.Code != proto.AuditProxyDenied {
					t.Fatalf("status %d, audit %s: want a refusal", resp.StatusCode, e.Code)
				}
				return
			}
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status = %d, want 200", resp.StatusCode)
			}
			got := testkit.Recv(t, rec, "upstream request").Header
			tp := got.Values("Traceparent")
			if len(tp) != 1 {
				t.Fatalf("upstream traceparent %q, want one", tp)
			}
			m := upstreamTraceparent.FindStringSubmatch(tp[0])
			if m == nil {
				t.Fatalf("upstream traceparent %q is not version 00 with lowercase hex", tp[0])
			}
			if m[1] != e.TraceID || m[3] != tt.flags {
				t.Errorf("upstream traceparent %q, want trace id %s (the audit event's) and flags 0%s", tp[0], e.TraceID, tt.flags)
			}
			if m[2] == clientSpan || spans[m[2]] {
				t.Errorf("upstream span id %s is the client's or an earlier request's: the proxy takes a new one per request", m[2])
			}
			spans[m[2]] = true
			h.waitLog(t, "trace_id="+e.TraceID+" span_id="+m[2])
			if st := strings.Join(got.Values("Tracestate"), ","); st != tt.state {
				t.Errorf("upstream tracestate %q, want %q", st, tt.state)
			}
		})
	}
}

// TestTraceContextOnStreams: both events of an upgraded stream, and its
// log lines, carry the trace the stream went upstream with.
func TestTraceContextOnStreams(t *testing.T) {
	h, events := newAuditHarness(t, newEchoUpgrade(t))
	c := h.dial()
	resp := c.do(t, "POST", "/api/v1/namespaces/default/pods/p/exec?command=sh",
		"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nTraceparent: 00-"+clientTrace+"-"+clientSpan+"-01\r\n")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade status = %d", resp.StatusCode)
	}
	start := testkit.Recv(t, events, "the stream start event")
	if start.Code != proto.AuditStreamStarted || start.TraceID != clientTrace {
		t.Fatalf("start = %+v, want %s with trace id %s", start, proto.AuditStreamStarted, clientTrace)
	}
	h.waitLog(t, `msg="stream started"`)
	c.Close()
	end := testkit.Recv(t, events, "the stream end event")
	if end.Code != proto.AuditStreamEnded || end.TraceID != clientTrace || end.Correlation != start.Correlation {
		t.Fatalf("end = %+v, want trace id %s and correlation %s", end, clientTrace, start.Correlation)
	}
	for _, msg := range []string{`msg="stream started"`, "msg=request"} {
		h.waitLog(t, msg+" .*correlation="+start.Correlation+" trace_id="+clientTrace+" span_id=[0-9a-f]{16}")
	}
}

// waitLog waits until a line of the proxy's log matches pattern.
func (h *harness) waitLog(t testing.TB, pattern string) {
	t.Helper()
	re := regexp.MustCompile(pattern)
	testkit.WaitFor(t, "a log line matching "+pattern, func() bool { return re.MatchString(h.logs.String()) })
}

// FuzzTraceHeaders feeds arbitrary trace context headers, as a client
// sends them (traceparent twice, tracestate in two lines), through the
// proxy's handling: what goes upstream is exactly one well-formed
// traceparent and at most one tracestate that parses back to itself, and
// a well-formed version 00 traceparent sent once keeps its trace id.
func FuzzTraceHeaders(f *testing.F) {
	valid := "00-" + clientTrace + "-" + clientSpan + "-01"
	f.Add(valid, "", "congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7")
	f.Add(valid, valid, "", "")
	f.Add("01-"+clientTrace+"-"+clientSpan+"-01-x", "", "a=1,b=2", "")
	f.Add("00-"+clientTrace+"-"+clientSpan+"-01\r\nImpersonate-User: admin", "", "a=1\r\nX-Evil: 1", "")
	f.Add("", "", "congo=t61rcWkgMzE", "")
	f.Add("hello", "", "", "")
	wellFormed := regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-0[0-3]$`)
	f.Fuzz(func(t *testing.T, tp1, tp2, ts1, ts2 string) {
		in := http.Header{}
		for k, vs := range map[string][]string{"Traceparent": {tp1, tp2}, "Tracestate": {ts1, ts2}} {
			for _, v := range vs {
				if v != "" {
					in.Add(k, v)
				}
			}
		}
		sc := requestTrace(in)
		out := http.Header{"Traceparent": {"stale"}, "Tracestate": {"stale=1"}}
		setTrace(out, sc)
		for k := range out {
			if k != "Traceparent" && k != "Tracestate" {
				t.Fatalf("upstream header %q set from %q", k, in)
			}
		}
		tp := out.Values("Traceparent")
		if len(tp) != 1 || !upstreamTraceparent.MatchString(tp[0]) {
			t.Fatalf("upstream traceparent %q from %q", tp, in)
		}
		if ts := out.Values("Tracestate"); len(ts) > 1 || len(ts) == 1 && (ts[0] == "" || ts[0] == "stale=1" || strings.ContainsAny(ts[0], "\r\n\x00")) {
			t.Fatalf("upstream tracestate %q from %q", ts, in)
		} else if len(ts) == 1 {
			back := requestTrace(http.Header{"Traceparent": tp, "Tracestate": ts})
			if got := back.TraceState().String(); got != ts[0] {
				t.Fatalf("upstream tracestate %q parses as %q", ts[0], got)
			}
		}
		if m := wellFormed.FindStringSubmatch(tp1); m != nil && tp2 == "" &&
			m[1] != strings.Repeat("0", 32) && m[2] != strings.Repeat("0", 16) && sc.TraceID().String() != m[1] {
			t.Fatalf("well-formed traceparent %q lost its trace id: %s", tp1, sc.TraceID())
		}
	})
}
