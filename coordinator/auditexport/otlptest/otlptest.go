// Package otlptest reads OTLP/HTTP logs export requests with the official
// OTLP protobuf types, for tests that stand in for an OpenTelemetry
// receiver (the unit tests of auditexport and the coordinator, and the
// integration tests).
package otlptest

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/http"

	collogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	"google.golang.org/protobuf/proto"
)

// maxBody bounds the request body read.
const maxBody = 64 << 20

// Decode reads r as an OTLP/HTTP logs export request: POST to /v1/logs,
// protobuf, gzip-compressed or not.
func Decode(r *http.Request) (*collogs.ExportLogsServiceRequest, error) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/logs" {
		return nil, fmt.Errorf("%s %s: want POST /v1/logs", r.Method, r.URL.Path)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		return nil, fmt.Errorf("content type %q: want application/x-protobuf", ct)
	}
	var body io.Reader = r.Body
	switch enc := r.Header.Get("Content-Encoding"); enc {
	case "":
	case "gzip":
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			return nil, err
		}
		body = zr
	default:
		return nil, fmt.Errorf("content encoding %q", enc)
	}
	raw, err := io.ReadAll(io.LimitReader(body, maxBody+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > maxBody {
		return nil, errors.New("request body too large")
	}
	var m collogs.ExportLogsServiceRequest
	if err := proto.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// Receive is Decode for a receiver's handler: when r is not an export
// request it answers 400 Bad Request naming why and returns false.
func Receive(w http.ResponseWriter, r *http.Request) (*collogs.ExportLogsServiceRequest, bool) {
	m, err := Decode(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil, false
	}
	return m, true
}

// Answer writes resp (an empty one when nil) as the protobuf answer to an
// export request.
func Answer(w http.ResponseWriter, resp *collogs.ExportLogsServiceResponse) {
	if resp == nil {
		resp = &collogs.ExportLogsServiceResponse{}
	}
	out, err := proto.Marshal(resp)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}
