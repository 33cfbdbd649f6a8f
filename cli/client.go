package cli

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/clustral/clustral/pkg/capool"
	"github.com/clustral/clustral/pkg/coordclient"
)

// newHTTPClient returns an HTTP client that trusts caFile (if set) besides
// the system roots and, with debug, traces requests without secrets.
//
// Its TLS sessions are cached, and a clone of its transport (the relay's,
// see relayClient) shares the cache: a new connection to the coordinator
// resumes the session of an earlier one, without a certificate to
// verify.
func newHTTPClient(caFile string, debug *slog.Logger) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, ClientSessionCache: tls.NewLRUClientSessionCache(0)}
	if caFile == "" {
		caFile = os.Getenv("CLUSTRAL_CA_FILE")
	}
	if caFile != "" {
		pool, err := capool.Load(caFile, "CA file")
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig.RootCAs = pool
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

// cliErr turns a coordinator problem (*coordclient.Error) into a
// *hintError with the problem's hint and the exit code its status calls
// for (3 for 401, 4 for 403, else 1). Other errors it returns unchanged.
func cliErr(err error) error {
	var pe *coordclient.Error
	if !errors.As(err, &pe) {
		return err
	}
	return withHint(problemExit(pe), pe, pe.Hint)
}

// problemExit is the exit code for a coordinator problem: 3 for 401, 4
// for 403, else 1.
func problemExit(pe *coordclient.Error) int {
	switch pe.Status {
	case http.StatusUnauthorized:
		return exitAuth
	case http.StatusForbidden:
		return exitDenied
	}
	return exitError
}

// unreachable gives err, a coordinator that could not be reached
// (coordclient.ErrUnreachable), exit code 5 and the hint to check the
// URL. run applies it to every such error that carries no hint of its
// own.
func unreachable(err error) error {
	return withHint(exitUnreach, err, "check the URL and your network, or run: clustral doctor")
}

// relayClient returns the client for the coordinator's relay, an HTTP
// upgrade, which needs hc's transport without the --debug trace.
func relayClient(hc *http.Client) *http.Client {
	if tt, ok := hc.Transport.(traceTransport); ok {
		return &http.Client{Transport: tt.next}
	}
	return hc
}
