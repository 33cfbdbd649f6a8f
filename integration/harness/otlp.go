package harness

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"sync"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// OTLPReceiver is an OTLP/gRPC trace receiver in the test process: the
// spans a component exports to it (kube-apiserver with
// APIServerOptions.TracingEndpoint) are kept for the test to look at. It
// is safe for concurrent use; Close stops it.
type OTLPReceiver struct {
	collectortrace.UnimplementedTraceServiceServer

	// Addr is the receiver's host:port, plaintext gRPC.
	Addr string

	srv   *grpc.Server
	done  chan struct{}
	mu    sync.Mutex
	spans []*tracev1.Span
}

// StartOTLPReceiver starts a receiver on a free loopback port. The caller
// must Close it.
func StartOTLPReceiver() (*OTLPReceiver, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("start OTLP receiver: %w", err)
	}
	r := &OTLPReceiver{Addr: l.Addr().String(), srv: grpc.NewServer(), done: make(chan struct{})}
	collectortrace.RegisterTraceServiceServer(r.srv, r)
	go func() {
		defer close(r.done)
		r.srv.Serve(l)
	}()
	return r, nil
}

// Export keeps the spans of req.
func (r *OTLPReceiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			r.spans = append(r.spans, ss.GetSpans()...)
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// Spans returns the spans received so far of the trace with traceID, in
// lowercase hex as in a traceparent.
func (r *OTLPReceiver) Spans(traceID string) []*tracev1.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*tracev1.Span
	for _, s := range r.spans {
		if hex.EncodeToString(s.GetTraceId()) == traceID {
			out = append(out, s)
		}
	}
	return out
}

// Close stops the receiver, and with it the connections of exporters.
func (r *OTLPReceiver) Close() {
	r.srv.Stop()
	<-r.done
}
