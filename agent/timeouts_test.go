package agent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// shortTimeouts are the server timeouts of the tests below: short enough
// that a test waits for them, long enough for a loaded machine to finish a
// TLS handshake within.
var shortTimeouts = serverTimeouts{readHeader: 500 * time.Millisecond, read: 500 * time.Millisecond, idle: 500 * time.Millisecond}

func withShortTimeouts(c *ProxyConfig) { c.timeouts = shortTimeouts }

// pastTimeouts lets every timeout of the proxy's server pass several
// times over: only time passing can show that nothing cut a request.
func pastTimeouts() { time.Sleep(4 * shortTimeouts.read) }

// longUpstream is a fake apiserver whose answers outlast the proxy's
// timeouts. It reads the request body, then: for a watch or logs
// --follow, writes "first" and flushes; then waits for release and ends
// with "after N body bytes". Upgrades go to an echoUpgrade.
type longUpstream struct {
	upgrade *echoUpgrade
	release chan struct{}
	// bodies, if set, gets the length of each request body the upstream
	// read whole, and -1 for each it could not.
	bodies chan int
}

func (u *longUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") != "" {
		u.upgrade.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	if u.bodies != nil && r.ContentLength != 0 {
		if err != nil {
			u.bodies <- -1
		} else {
			u.bodies <- len(body)
		}
	}
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	q := r.URL.Query()
	if q.Get("watch") == "true" || q.Get("follow") == "true" {
		io.WriteString(w, "first\n")
		http.NewResponseController(w).Flush()
	}
	select {
	case <-u.release:
	case <-r.Context().Done():
		return
	}
	fmt.Fprintf(w, "after %d body bytes\n", len(body))
}

// TestProxyTimeoutsCutSlowClients: a client of the proxy that sends its
// headers or its body slowly, or keeps an idle connection, is disconnected
// by the server's timeouts, over HTTP/1.1 and HTTP/2. A body that stopped
// coming is answered 408 with a sentence, not blamed on the apiserver, and
// never reaches the apiserver whole.
func TestProxyTimeoutsCutSlowClients(t *testing.T) {
	for _, tc := range []struct {
		name string
		send string
		// status is the answer before the connection closes; 0 for none.
		status int
	}{
		{"headers never end", "GET /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: prod.clustral.internal\r\n", 0},
		{"body never ends", "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: prod.clustral.internal\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"apiVersion\":", http.StatusRequestTimeout},
		{"chunked body never ends", "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: prod.clustral.internal\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\ne\r\n{\"apiVersion\":\r\n", http.StatusRequestTimeout},
		{"idle keep-alive", "GET /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: prod.clustral.internal\r\n\r\n", http.StatusOK},
	} {
		t.Run("HTTP/1.1 "+tc.name, func(t *testing.T) {
			t.Parallel()
			up := &longUpstream{upgrade: newEchoUpgrade(t), release: make(chan struct{}), bodies: make(chan int, 1)}
			close(up.release)
			h := newHarness(t, up, withShortTimeouts)
			c := h.dial()
			if _, err := io.WriteString(c, tc.send); err != nil {
				t.Fatal(err)
			}
			if tc.status != 0 {
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				resp, err := http.ReadResponse(c.br, nil)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.status {
					t.Fatalf("answer = %d %q, want %d", resp.StatusCode, body, tc.status)
				}
				if tc.status == http.StatusOK && resp.Close {
					t.Fatal("answer closes the connection, want it kept alive")
				}
				if tc.status == http.StatusRequestTimeout {
					checkError(t, resp, string(body), http.StatusRequestTimeout, proto.CodeRequestTimeout, "The request body did not reach the clustral proxy of cluster 'prod'")
				}
			}
			c.waitClosed(t)
			if tc.status == http.StatusRequestTimeout {
				if n := testkit.Recv(t, up.bodies, "the upstream's read of the body"); n >= 0 {
					t.Errorf("the apiserver received a whole body of %d bytes", n)
				}
			}
		})
	}

	t.Run("HTTP/2 body never ends", func(t *testing.T) {
		t.Parallel()
		up := &longUpstream{upgrade: newEchoUpgrade(t), release: make(chan struct{}), bodies: make(chan int, 1)}
		close(up.release)
		h := newHarness(t, up, withShortTimeouts)
		resp, body := h.postUnended(`{"apiVersion":`)
		if resp.ProtoMajor != 2 {
			t.Errorf("answered over HTTP/%d, want HTTP/2", resp.ProtoMajor)
		}
		checkError(t, resp, body, http.StatusRequestTimeout, proto.CodeRequestTimeout, "The request body did not reach the clustral proxy of cluster 'prod'")
		if n := testkit.Recv(t, up.bodies, "the upstream's read of the body"); n >= 0 {
			t.Errorf("the apiserver received a whole body of %d bytes", n)
		}
	})
}

// TestProxyLongRequestsOutliveTimeouts: what may rightly last long is not
// cut by the proxy's server timeouts: watches and logs --follow over
// HTTP/1.1 and HTTP/2, an answer that takes long after a request without
// a body or after a body sent in time, and an upgraded exec stream.
func TestProxyLongRequestsOutliveTimeouts(t *testing.T) {
	for _, tc := range []struct {
		name, method, path, body string
		http2                    bool
		want                     string
	}{
		{"HTTP/1.1 watch", "GET", "/api/v1/namespaces/default/pods?watch=true", "", false, "first\nafter 0 body bytes\n"},
		{"HTTP/2 watch", "GET", "/api/v1/namespaces/default/pods?watch=true", "", true, "first\nafter 0 body bytes\n"},
		{"HTTP/1.1 logs --follow", "GET", "/api/v1/namespaces/default/pods/p/log?follow=true", "", false, "first\nafter 0 body bytes\n"},
		{"HTTP/2 logs --follow", "GET", "/api/v1/namespaces/default/pods/p/log?follow=true", "", true, "first\nafter 0 body bytes\n"},
		{"HTTP/1.1 slow answer", "GET", "/api/v1/namespaces/default/pods", "", false, "after 0 body bytes\n"},
		{"HTTP/1.1 slow answer after a body", "POST", "/api/v1/namespaces/default/configmaps", `{"kind":"ConfigMap"}`, false, "after 20 body bytes\n"},
		{"HTTP/2 slow answer after a body", "POST", "/api/v1/namespaces/default/configmaps", `{"kind":"ConfigMap"}`, true, "after 20 body bytes\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := &longUpstream{upgrade: newEchoUpgrade(t), release: make(chan struct{})}
			h := newHarness(t, up, withShortTimeouts)
			release := func() { pastTimeouts(); close(up.release) }
			var (
				resp *http.Response
				err  error
			)
			if tc.http2 {
				go release()
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				req, rerr := http.NewRequestWithContext(ctx, tc.method, h.url(tc.path), strings.NewReader(tc.body))
				if rerr != nil {
					t.Fatal(rerr)
				}
				resp, err = h.client.Do(req)
				if err == nil && resp.ProtoMajor != 2 {
					t.Fatalf("answered over HTTP/%d, want HTTP/2", resp.ProtoMajor)
				}
			} else {
				c := h.dial()
				go release()
				extra := ""
				if tc.body != "" {
					extra = fmt.Sprintf("Content-Type: application/json\r\nContent-Length: %d\r\n", len(tc.body))
				}
				c.SetDeadline(time.Now().Add(20 * time.Second))
				if _, err := fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: prod.clustral.internal\r\n%s\r\n%s", tc.method, tc.path, extra, tc.body); err != nil {
					t.Fatal(err)
				}
				resp, err = http.ReadResponse(c.br, nil)
			}
			if err != nil {
				t.Fatalf("%s %s: %v", tc.method, tc.path, err)
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != http.StatusOK || string(got) != tc.want {
				t.Fatalf("%s %s = %d %q, %v; want 200 %q", tc.method, tc.path, resp.StatusCode, got, err, tc.want)
			}
		})
	}

	t.Run("exec", func(t *testing.T) {
		t.Parallel()
		up := newEchoUpgrade(t)
		h := newHarness(t, up, withShortTimeouts)
		c := openUpgrade(t, h, "SPDY/3.1")
		pastTimeouts()
		c.echo(t, "still there")
		c.CloseWrite()
		testkit.Recv(t, up.ended, "upstream stream end")
		c.waitClosed(t)
	})
}
