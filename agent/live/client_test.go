package live

import (
	"crypto/tls"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"k8s.io/client-go/rest"
)

// TestHTTPClientOffersOnlyH2: a viewer's client offers h2 alone, so an
// agent, which prefers HTTP/1.1, serves its streams over HTTP/2; and it
// keeps cfg's credentials.
func TestHTTPClientOffersOnlyH2(t *testing.T) {
	offered := make(chan []string, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Get("Authorization"); got != "Bearer t0ken" {
			t.Errorf("Authorization = %q, want the config's bearer token", got)
		}
	}))
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{
		NextProtos: []string{"http/1.1", "h2"}, // the agent's order
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			offered <- slices.Clone(hello.SupportedProtos)
			return nil, nil
		},
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	hc, err := HTTPClient(&rest.Config{Host: srv.URL, BearerToken: "t0ken", TLSClientConfig: rest.TLSClientConfig{CAData: ca}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hc.CloseIdleConnections)
	resp, err := hc.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Errorf("served over HTTP/%d, want HTTP/2", resp.ProtoMajor)
	}
	if got := <-offered; !slices.Equal(got, []string{"h2"}) {
		t.Errorf("client offered %q, want only h2", got)
	}
}
