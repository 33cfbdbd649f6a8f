package cli

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"testing"

	"github.com/clustral/clustral/pkg/testkit"
)

// tlsCoordinator serves HTTP/1.1 over TLS 1.3 with an ECDSA certificate,
// as the coordinator does, and returns its URL and a CA file that trusts
// it.
func tlsCoordinator(tb testing.TB) (url, caFile string) {
	tb.Helper()
	certPEM, keyPEM := testkit.ServerCert(tb, "coordinator")
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
	srv.StartTLS()
	tb.Cleanup(srv.Close)
	caFile = filepath.Join(tb.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, certPEM, 0o600); err != nil {
		tb.Fatal(err)
	}
	return srv.URL, caFile
}

// relayTransport is the transport node.RunRelay makes of the client's: a
// clone, HTTP/1.1 only.
func relayTransport(hc *http.Client) *http.Transport {
	tr := hc.Transport.(*http.Transport).Clone()
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP1(true)
	return tr
}

// getResumed GETs url on a new connection of rt and reports whether its
// TLS handshake resumed a session.
func getResumed(tb testing.TB, rt http.RoundTripper, url string) bool {
	tb.Helper()
	var state tls.ConnectionState
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(tb.Context(), &httptrace.ClientTrace{
		TLSHandshakeDone: func(cs tls.ConnectionState, _ error) { state = cs },
	}), "GET", url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		tb.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body) // reads the session ticket
	resp.Body.Close()
	if !state.HandshakeComplete {
		tb.Fatal("the request reused a connection")
	}
	return state.DidResume
}

// TestHTTPClientResumesTLS: the relay's connection, on a clone of the
// client's transport, resumes the TLS session of the client's first
// request (registration) instead of verifying the certificate again.
func TestHTTPClientResumesTLS(t *testing.T) {
	url, caFile := tlsCoordinator(t)
	hc, err := newHTTPClient(caFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	if getResumed(t, hc.Transport, url) {
		t.Fatal("the first connection resumed a session")
	}
	if !getResumed(t, relayTransport(hc), url) {
		t.Fatal("the relay's connection did not resume the client's TLS session")
	}
}

// BenchmarkCoordinatorReconnect measures a new connection to the
// coordinator (ECDSA P-256, TLS 1.3) and one request on it, as the
// relay's first connection after registration makes: resuming the
// session, and with a full handshake.
func BenchmarkCoordinatorReconnect(b *testing.B) {
	url, caFile := tlsCoordinator(b)
	for _, resume := range []bool{true, false} {
		name := "full"
		if resume {
			name = "resumed"
		}
		b.Run(name, func(b *testing.B) {
			hc, err := newHTTPClient(caFile, nil)
			if err != nil {
				b.Fatal(err)
			}
			getResumed(b, hc.Transport, url)
			for b.Loop() {
				tr := relayTransport(hc)
				if !resume {
					tr.TLSClientConfig.ClientSessionCache = nil
				}
				if got := getResumed(b, tr, url); got != resume {
					b.Fatalf("resumed = %v, want %v", got, resume)
				}
				tr.CloseIdleConnections()
			}
		})
	}
}
