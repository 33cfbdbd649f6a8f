package auditexport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploghttp"
	"go.opentelemetry.io/otel/log"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/clustral/clustral/pkg/version"
	"github.com/clustral/clustral/proto"
)

// ServiceName is the service.name resource attribute of exported logs.
const ServiceName = "clustral-coordinator"

// scopeName is the instrumentation scope of exported logs.
const scopeName = "github.com/clustral/clustral/coordinator/auditexport"

// otlpSender sends batches as OpenTelemetry log records over OTLP/HTTP.
//
// The records are made by the OpenTelemetry log SDK (a LoggerProvider
// with the resource and a processor that only collects what is emitted)
// and sent by otlploghttp's Exporter, called directly: its Export sends
// one request and returns nil only when the receiver answered 2xx. The
// SDK's batch processor is not used, because it sends on its own schedule
// and drops what fails, while the cursor may move only after the receiver
// took the batch. The exporter's own retries are off: the caller backs
// off and resends from its cursor.
type otlpSender struct {
	exp    *otlploghttp.Exporter
	lp     *sdklog.LoggerProvider
	logger log.Logger
	col    *collector
}

// collector is a Processor that keeps what is emitted until taken.
type collector struct {
	mu   sync.Mutex
	recs []sdklog.Record
}

func (c *collector) OnEmit(_ context.Context, r *sdklog.Record) error {
	c.mu.Lock()
	c.recs = append(c.recs, r.Clone())
	c.mu.Unlock()
	return nil
}

func (c *collector) take() []sdklog.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.recs
	c.recs = nil
	return r
}

func (*collector) Enabled(context.Context, sdklog.EnabledParameters) bool { return true }
func (*collector) Shutdown(context.Context) error                         { return nil }
func (*collector) ForceFlush(context.Context) error                       { return nil }

func newOTLPSender(d *Destination) (*otlpSender, error) {
	opts := []otlploghttp.Option{
		otlploghttp.WithEndpointURL(d.Endpoint),
		otlploghttp.WithHeaders(d.Headers),
		otlploghttp.WithTimeout(d.Timeout),
		otlploghttp.WithRetry(otlploghttp.RetryConfig{Enabled: false}),
		otlploghttp.WithCompression(otlploghttp.GzipCompression),
		otlploghttp.WithTLSClientConfig(d.TLS),
	}
	exp, err := otlploghttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("audit export %s: %w", d.Name, err)
	}
	col := &collector{}
	lp := sdklog.NewLoggerProvider(
		sdklog.WithResource(resource.NewSchemaless(
			attribute.String("service.name", ServiceName),
			attribute.String("service.version", version.Get().Version))),
		sdklog.WithProcessor(col),
		sdklog.WithAttributeCountLimit(-1),
	)
	return &otlpSender{exp: exp, lp: lp, logger: lp.Logger(scopeName), col: col}, nil
}

// otlpSeverity maps an audit code's level to an OpenTelemetry severity.
func otlpSeverity(c proto.AuditCode) (log.Severity, string) {
	switch c.Severity() {
	case "E":
		return log.SeverityError, "ERROR"
	case "W":
		return log.SeverityWarn, "WARN"
	}
	return log.SeverityInfo, "INFO"
}

// otlpRecord is the log record of e: the event's time as the timestamp,
// the code's level as the severity, the code as the event name, the JSON
// event as the body, and its fields as attributes clustral.audit.*
// (metadata as clustral.audit.metadata.<key>).
func otlpRecord(e *proto.AuditEvent) (log.Record, error) {
	var r log.Record
	body, err := json.Marshal(e)
	if err != nil {
		return r, fmt.Errorf("encode audit event %d: %w", e.Seq, err)
	}
	r.SetTimestamp(e.Time)
	sev, text := otlpSeverity(e.Code)
	r.SetSeverity(sev)
	r.SetSeverityText(text)
	r.SetEventName("clustral.audit." + string(e.Code))
	r.SetBody(attribute.StringValue(string(body)))
	attrs := []attribute.KeyValue{
		attribute.String("clustral.audit.code", string(e.Code)),
		attribute.Int64("clustral.audit.seq", int64(e.Seq)),
		attribute.String("clustral.audit.hash", e.Hash),
		attribute.String("clustral.audit.category", string(e.Category)),
		attribute.String("clustral.audit.outcome", string(e.Outcome)),
		attribute.String("clustral.audit.actor", e.Actor),
	}
	for _, kv := range []struct{ k, v string }{
		{"cluster", e.Cluster}, {"object", e.Object}, {"error", string(e.Error)},
		{"correlation", e.Correlation}, {"source", e.Source},
	} {
		if kv.v != "" {
			attrs = append(attrs, attribute.String("clustral.audit."+kv.k, kv.v))
		}
	}
	if e.Status != 0 {
		attrs = append(attrs, attribute.Int("clustral.audit.status", e.Status))
	}
	if res := e.Resource; res != nil {
		for _, kv := range []struct{ k, v string }{
			{"verb", res.Verb}, {"api_group", res.APIGroup}, {"resource", res.Resource},
			{"subresource", res.Subresource}, {"namespace", res.Namespace}, {"name", res.Name}, {"path", res.Path},
		} {
			if kv.v != "" {
				attrs = append(attrs, attribute.String("clustral.audit.resource."+kv.k, kv.v))
			}
		}
	}
	for k, v := range e.Metadata {
		attrs = append(attrs, attribute.String("clustral.audit.metadata."+k, v))
	}
	r.AddAttributes(attrs...)
	return r, nil
}

// Send exports evs in one request and returns nil once the receiver
// accepted it. A partial success (the receiver took the request but
// rejected some records) is returned as a *RejectedError: sending those
// records again would not help.
func (s *otlpSender) Send(ctx context.Context, evs []proto.AuditEvent) error {
	s.col.take()
	for i := range evs {
		r, err := otlpRecord(&evs[i])
		if err != nil {
			return err
		}
		s.logger.Emit(ctx, r)
	}
	recs := s.col.take()
	if len(recs) != len(evs) {
		return fmt.Errorf("the log SDK made %d records of %d events", len(recs), len(evs))
	}
	err := s.exp.Export(ctx, recs)
	// otlploghttp reports a 2xx answer with a partial_success as an
	// error of an internal type; its text is the only way to tell
	// it apart (TestOTLPPartialSuccess holds it).
	if err != nil && strings.HasPrefix(err.Error(), "OTLP partial success") {
		return &RejectedError{Msg: err.Error()}
	}
	return err
}

// RejectedError is a receiver's answer that it took a batch but rejected
// some of its records.
type RejectedError struct{ Msg string }

func (e *RejectedError) Error() string { return e.Msg }

// Close shuts the exporter and the provider down.
func (s *otlpSender) Close() error {
	ctx := context.Background()
	return errors.Join(s.exp.Shutdown(ctx), s.lp.Shutdown(ctx))
}
