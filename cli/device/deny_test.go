package device

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

func TestDenierAnswersPlainText403(t *testing.T) {
	d, err := newDenier("alice@example.com", "clustral.internal", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() }) // the goroutine checks of other tests see none of its servers
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(d.caPEM) {
		t.Fatal("caPEM holds no certificate")
	}
	tests := []struct {
		name       string
		serverName string
		wantTLSErr bool
	}{
		{"the cluster's mesh name", "prod.clustral.internal", false},
		{"another cluster's name", "staging.clustral.internal", true},
		{"a name outside the mesh", "prod.example.com", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tls.Client(d.conn("prod"), &tls.Config{RootCAs: pool, ServerName: tt.serverName})
			defer c.Close()
			// A refused handshake ends at the deadline: over a synchronous
			// pipe the client's alert waits behind the server's unread
			// flight. Through the SOCKS server both directions are read.
			deadline := 5 * time.Second
			if tt.wantTLSErr {
				deadline = 300 * time.Millisecond
			}
			c.SetDeadline(time.Now().Add(deadline))
			if err := c.Handshake(); (err != nil) != tt.wantTLSErr {
				t.Fatalf("handshake err = %v, want error %v", err, tt.wantTLSErr)
			}
			if tt.wantTLSErr {
				return
			}
			io.WriteString(c, "GET /api/v1/pods HTTP/1.1\r\nHost: prod.clustral.internal\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 403 || resp.Header.Get(proto.HeaderErrorCode) != string(proto.CodeNoRoleAssignment) ||
				!strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
				t.Fatalf("answer = %d %v", resp.StatusCode, resp.Header)
			}
			for _, want := range []string{"alice@example.com has no role on cluster 'prod'", "clustral access request --cluster prod"} {
				if !strings.Contains(string(body), want) {
					t.Errorf("body %q lacks %q", body, want)
				}
			}
		})
	}
}

// TestDenierCANameConstrained: the local CA cannot vouch for names
// outside the mesh domain, whatever it signs.
func TestDenierCANameConstrained(t *testing.T) {
	d, err := newDenier("alice@example.com", "clustral.internal", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.ca.PermittedDNSDomains; len(got) != 1 || got[0] != "clustral.internal" || !d.ca.PermittedDNSDomainsCritical && len(got) == 0 {
		t.Fatalf("permitted domains = %v", got)
	}
}

// TestDenierCloseEndsItsServers: Close ends the connections conn handed
// out and waits for their servers; a conn after Close is closed at once.
// Every other test in the package closes its deniers, so any denier
// goroutine left is this one's.
func TestDenierCloseEndsItsServers(t *testing.T) {
	d, err := newDenier("alice@example.com", "clustral.internal", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	open := d.conn("prod")
	defer open.Close()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if g := deviceGoroutines(); len(g) > 0 {
		t.Fatalf("goroutines left after Close:\n%s", strings.Join(g, "\n\n"))
	}
	for name, c := range map[string]net.Conn{"open before Close": open, "after Close": d.conn("staging")} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("read on the conn %s = %v, want it closed", name, err)
		}
	}
}
