package agent

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net/http"
	"strings"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Trace context (W3C Trace Context, traceparent and tracestate).
//
// Every request the proxy forwards carries a traceparent to the apiserver,
// which, with tracing enabled, records its spans under it or links it
// (below). The proxy keeps a valid traceparent from the client (its trace
// id, sampled flag and tracestate) and starts a trace of its own when
// there is none or it does not parse: a random trace id, flags "random"
// and not sampled. Either way the proxy takes a new span id, its own, as
// the parent of the apiserver's span, so each apiserver span names exactly
// one of the proxy's requests even when a client sends the same
// traceparent every time. The proxy records no spans itself; its request
// log line carries the trace id and its span id, and the audit event the
// trace id, beside the correlation id.
//
// The apiserver follows the traceparent only when the agent's own
// identity is in system:masters or system:monitoring; otherwise it starts
// a trace of its own and links this one.
//
// A trace the proxy starts is not sampled: an apiserver that follows it
// then records the request only if the client asked for it, so the proxy
// does not make every traced apiserver record every request, and a client
// that wants the apiserver's spans sends a sampled traceparent.
//
// Parsing and writing are go.opentelemetry.io/otel/propagation's; what
// goes upstream is re-encoded from the parsed values, never the client's
// text, so nothing else can ride on these headers.

// traceHeaders are the headers of W3C Trace Context, in canonical form.
var traceHeaders = []string{"Traceparent", "Tracestate"}

// traceCarrier reads a client's trace context headers (net/http has put
// their names in canonical form) for the propagator, as W3C Trace Context
// asks: a traceparent sent more than once is invalid, and the lines of
// tracestate make one list. It reads no other header.
type traceCarrier http.Header

func (c traceCarrier) Get(key string) string {
	switch key {
	case "traceparent":
		if v := c["Traceparent"]; len(v) == 1 {
			return v[0]
		}
	case "tracestate":
		return strings.Join(c["Tracestate"], ",")
	}
	return ""
}

func (traceCarrier) Set(string, string) {}

func (traceCarrier) Keys() []string { return traceHeaders }

// requestTrace returns the trace context the proxy sends upstream for a
// request with header h: the client's trace, when h carries a valid one,
// or a new one, with a new span id of the proxy's.
func requestTrace(h http.Header) trace.SpanContext {
	in := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), traceCarrier(h)))
	c := trace.SpanContextConfig{SpanID: newSpanID()}
	if in.IsValid() {
		c.TraceID, c.TraceFlags, c.TraceState = in.TraceID(), in.TraceFlags(), in.TraceState()
	} else {
		c.TraceID, c.TraceFlags = newTraceID(), trace.FlagsRandom
	}
	return trace.NewSpanContext(c)
}

// setTrace replaces the trace context headers of h with sc.
func setTrace(h http.Header, sc trace.SpanContext) {
	for _, k := range traceHeaders {
		delete(h, k)
	}
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), sc), propagation.HeaderCarrier(h))
}

// newTraceID returns a random, valid (non-zero) trace id. Trace ids are
// not secrets; math/rand/v2 is seeded from the system and cheap.
func newTraceID() trace.TraceID {
	var id trace.TraceID
	for !id.IsValid() {
		binary.BigEndian.PutUint64(id[:8], rand.Uint64())
		binary.BigEndian.PutUint64(id[8:], rand.Uint64())
	}
	return id
}

// newSpanID returns a random, valid (non-zero) span id.
func newSpanID() trace.SpanID {
	var id trace.SpanID
	for !id.IsValid() {
		binary.BigEndian.PutUint64(id[:], rand.Uint64())
	}
	return id
}
