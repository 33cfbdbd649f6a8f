package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/clustral/clustral/proto"
)

// apiClient talks to the coordinator's JSON API.
type apiClient struct {
	base  string
	token string
	hc    *http.Client
}

// newHTTPClient returns an HTTP client that trusts caFile (if set) besides
// the system roots and, with debug, traces requests without secrets.
func newHTTPClient(caFile string, debug *slog.Logger) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile == "" {
		caFile = os.Getenv("CLUSTRAL_CA_FILE")
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	var rt http.RoundTripper = tr
	if debug != nil {
		rt = traceTransport{rt, debug}
	}
	return &http.Client{Transport: rt}, nil
}

// traceTransport logs each request's method, URL path, status and timing.
// It never logs headers or bodies, which carry secrets.
type traceTransport struct {
	next http.RoundTripper
	log  *slog.Logger
}

func (t traceTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(r)
	attrs := []any{"method", r.Method, "url", r.URL.Scheme + "://" + r.URL.Host + r.URL.Path, "duration", time.Since(start).Round(time.Microsecond)}
	if err != nil {
		t.log.Debug("http", append(attrs, "err", err)...)
		return nil, err
	}
	t.log.Debug("http", append(attrs, "status", resp.StatusCode, "proto", resp.Proto)...)
	return resp, nil
}

// problemError is a coordinator error answer.
type problemError struct {
	status int
	p      proto.Problem
}

func (e *problemError) Error() string {
	if e.p.Detail != "" {
		return e.p.Title + ": " + e.p.Detail
	}
	return e.p.Title
}

// do sends a request with an optional JSON body and decodes a JSON answer
// into out. Problem answers become errors with the coordinator's hint.
func (c *apiClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return withHint(exitUnreach, fmt.Errorf("reach coordinator %s: %w", c.base, err), "check the URL and your network, or run: clustral doctor")
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 || resp.StatusCode == http.StatusAccepted {
		pe := &problemError{status: resp.StatusCode}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &pe.p) != nil || pe.p.Title == "" {
			pe.p.Title = fmt.Sprintf("coordinator answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
		}
		return pe
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode coordinator answer to %s %s: %w", method, path, err)
	}
	return nil
}

// cliErr turns a coordinator problem (*problemError) into a *hintError
// with the problem's hint and the exit code its status calls for (3 for
// 401, 4 for 403, else 1). Other errors it returns unchanged.
func cliErr(err error) error {
	var pe *problemError
	if !errors.As(err, &pe) {
		return err
	}
	code := exitError
	switch pe.status {
	case http.StatusUnauthorized:
		code = exitAuth
	case http.StatusForbidden:
		code = exitDenied
	}
	return withHint(code, pe, pe.p.Hint)
}

// callAs is do with token as the bearer credential instead of c's own: a
// device.CallFunc.
func (c *apiClient) callAs(ctx context.Context, token, method, path string, body, out any) error {
	as := *c
	as.token = token
	return as.do(ctx, method, path, body, out)
}

// relayClient returns the client for the coordinator's relay, an HTTP
// upgrade, which needs hc's transport without the --debug trace.
func relayClient(hc *http.Client) *http.Client {
	if tt, ok := hc.Transport.(traceTransport); ok {
		return &http.Client{Transport: tt.next}
	}
	return hc
}
