package agent

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"testing"
)

// BenchmarkProxyGet compares a small GET through the proxy with the same
// GET sent straight to the fake apiserver over TLS and HTTP/2, all with
// warm connections. The difference is the proxy's overhead: for kubectl,
// which the proxy serves HTTP/1.1, and for a client of HTTP/2 alone.
func BenchmarkProxyGet(b *testing.B) {
	const body = `{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-1","namespace":"default"}}`
	h := newHarness(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	}), func(c *ProxyConfig) { c.RateLimit = -1 }) // measure the proxy, not the limiter
	roots := x509.NewCertPool()
	roots.AddCert(h.upstream.Certificate())
	direct := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: true,
	}}
	b.Cleanup(direct.CloseIdleConnections)

	run := func(b *testing.B, c *http.Client, url string) {
		get := func() {
			resp, err := c.Get(url)
			if err != nil {
				b.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || n != int64(len(body)) {
				b.Fatalf("status %d, %d bytes", resp.StatusCode, n)
			}
		}
		get() // warm the connections
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			get()
		}
	}
	const path = "/api/v1/namespaces/default/pods/web-1"
	b.Run("direct", func(b *testing.B) { run(b, direct, h.upstream.URL+path) })
	b.Run("proxy", func(b *testing.B) { run(b, h.kubectl, h.url(path)) })
	b.Run("proxy-h2", func(b *testing.B) { run(b, h.client, h.url(path)) })
}
