package auditexport

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	collogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"

	"github.com/clustral/clustral/coordinator/auditexport/otlptest"
	"github.com/clustral/clustral/proto"
)

// otlpReceiver is an OTLP/HTTP logs endpoint that decodes requests with
// the OTLP protobuf types and answers what answer says.
type otlpReceiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	reqs   []*collogs.ExportLogsServiceRequest
	auth   []string
	answer func(w http.ResponseWriter) bool // true: answered, do not record
}

func startOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	r := &otlpReceiver{}
	r.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		m, ok := otlptest.Receive(w, req)
		if !ok {
			return
		}
		r.mu.Lock()
		answer := r.answer
		r.mu.Unlock()
		if answer != nil && answer(w) {
			return
		}
		r.mu.Lock()
		r.reqs = append(r.reqs, m)
		r.auth = append(r.auth, req.Header.Get("Authorization"))
		r.mu.Unlock()
		otlptest.Answer(w, nil)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// sender is an otlpSender to the receiver, closed when the test ends.
func (r *otlpReceiver) sender(t *testing.T) *otlpSender {
	t.Helper()
	s, err := newOTLPSender(r.dest(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func (r *otlpReceiver) dest(t *testing.T, extra string) *Destination {
	t.Helper()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.srv.Certificate().Raw})
	hdr := writeFile(t, "headers", "Authorization: Bearer t0ken\n")
	d, err := Parse("otlp+https://" + r.srv.Listener.Addr().String() + "/v1/logs?ca=" + writeFile(t, "ca.pem", string(caPEM)) + "&headers-file=" + hdr + extra)
	if err != nil {
		t.Fatal(err)
	}
	return &d
}

// kvMap flattens OTLP attributes to strings.
func kvMap(kvs []*commonpb.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		switch v := kv.Value.Value.(type) {
		case *commonpb.AnyValue_StringValue:
			m[kv.Key] = v.StringValue
		case *commonpb.AnyValue_IntValue:
			m[kv.Key] = strconv.FormatInt(v.IntValue, 10)
		default:
			m[kv.Key] = kv.Value.String()
		}
	}
	return m
}

// TestOTLPRecords: each event is one log record with the event's time,
// a severity from its code's level, its fields as attributes and the
// JSON event as the body, under the resource service.name
// clustral-coordinator; the headers from the file are sent.
func TestOTLPRecords(t *testing.T) {
	r := startOTLPReceiver(t)
	s := r.sender(t)
	evs := testEvents()
	if err := s.Send(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.reqs) != 1 || r.auth[0] != "Bearer t0ken" {
		t.Fatalf("%d requests, authorization %q", len(r.reqs), r.auth)
	}
	rl := r.reqs[0].ResourceLogs
	if len(rl) != 1 || len(rl[0].ScopeLogs) != 1 {
		t.Fatalf("resource logs: %v", rl)
	}
	res := kvMap(rl[0].Resource.Attributes)
	if res["service.name"] != ServiceName {
		t.Errorf("resource %v", res)
	}
	recs := rl[0].ScopeLogs[0].LogRecords
	if len(recs) != len(evs) {
		t.Fatalf("%d records, want %d", len(recs), len(evs))
	}
	wantSev := []logspb.SeverityNumber{logspb.SeverityNumber_SEVERITY_NUMBER_INFO, logspb.SeverityNumber_SEVERITY_NUMBER_WARN, logspb.SeverityNumber_SEVERITY_NUMBER_ERROR}
	for i, rec := range recs {
		e := evs[i]
		a := kvMap(rec.Attributes)
		if rec.TimeUnixNano != uint64(e.Time.UnixNano()) || rec.SeverityNumber != wantSev[i] ||
			a["clustral.audit.code"] != string(e.Code) || a["clustral.audit.actor"] != e.Actor || a["clustral.audit.seq"] != []string{"1", "2", "3"}[i] ||
			a["clustral.audit.hash"] != e.Hash || a["clustral.audit.cluster"] != e.Cluster || rec.EventName != "clustral.audit."+string(e.Code) {
			t.Errorf("record %d: time %d severity %v attributes %v event %q", i, rec.TimeUnixNano, rec.SeverityNumber, a, rec.EventName)
		}
		var back proto.AuditEvent
		if err := json.Unmarshal([]byte(rec.Body.GetStringValue()), &back); err != nil || back.Seq != e.Seq {
			t.Errorf("record %d body %v (%v)", i, rec.Body, err)
		}
	}
	if a := kvMap(recs[1].Attributes); a["clustral.audit.resource.subresource"] != "exec" || a["clustral.audit.metadata.reason"] != "ünïcode ✓" {
		t.Errorf("record 2 attributes %v", a)
	}
}

// TestOTLPAnswers: only a 2xx is success; a partial success is a
// RejectedError (the caller does not resend it).
func TestOTLPAnswers(t *testing.T) {
	r := startOTLPReceiver(t)
	s := r.sender(t)
	for _, tt := range []struct {
		name     string
		answer   func(w http.ResponseWriter) bool
		rejected bool
	}{
		{"unavailable", func(w http.ResponseWriter) bool { http.Error(w, "busy", http.StatusServiceUnavailable); return true }, false},
		{"unauthorized", func(w http.ResponseWriter) bool { http.Error(w, "who", http.StatusUnauthorized); return true }, false},
		{"partial success", func(w http.ResponseWriter) bool {
			otlptest.Answer(w, &collogs.ExportLogsServiceResponse{PartialSuccess: &collogs.ExportLogsPartialSuccess{RejectedLogRecords: 1, ErrorMessage: "too old"}})
			return true
		}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r.mu.Lock()
			r.answer = tt.answer
			r.mu.Unlock()
			err := s.Send(context.Background(), testEvents())
			var rej *RejectedError
			if err == nil || errors.As(err, &rej) != tt.rejected {
				t.Fatalf("Send = %v (%T), want an error, rejected %v", err, err, tt.rejected)
			}
			if tt.rejected && !strings.Contains(err.Error(), "too old") {
				t.Errorf("rejection %q does not carry the receiver's message", err)
			}
		})
	}
}
