package agent

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// recorder is a fake apiserver that hands every request's headers and
// protocol version to the test.
type recorder chan *http.Request

func (rec recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec <- r.Clone(context.Background())
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"kind":"PodList","items":[]}`)
}

func TestHeaderInjection(t *testing.T) {
	rec := make(recorder, 1)
	h := newHarness(t, rec)

	tests := []struct {
		name    string
		headers string
	}{
		{"none", ""},
		{"bearer", "Authorization: Bearer x\r\n"},
		{"basic", "Authorization: Basic YWRtaW46YWRtaW4=\r\n"},
		{"impersonate user", "Impersonate-User: admin\r\n"},
		{"impersonate group", "Impersonate-Group: system:masters\r\nImpersonate-Group: system:nodes\r\n"},
		{"impersonate uid", "Impersonate-Uid: 0\r\n"},
		{"impersonate extra", "Impersonate-Extra-Scopes: all\r\nImpersonate-Extra-Acme.com%2Fproject: x\r\n"},
		{"mixed case", "iMpErSoNaTe-UsEr: admin\r\nIMPERSONATE-GROUP: system:masters\r\nauthorization: Bearer x\r\nimpersonate-extra-foo: bar\r\n"},
		{"named in Connection", "Connection: Impersonate-User, Impersonate-Group\r\nImpersonate-User: admin\r\nImpersonate-Group: system:masters\r\n"},
		{"Authorization named in Connection", "Connection: Authorization\r\nAuthorization: Bearer x\r\n"},
		{"forwarded spoof", "X-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: http\r\nX-Forwarded-User: admin\r\nX-Real-Ip: 10.0.0.1\r\n"},
		{"front-proxy headers", "X-Remote-User: admin\r\nX-Remote-Group: system:masters\r\nX-Remote-Extra-Scopes: all\r\n"},
		{"audit id", "Audit-Id: forged\r\naudit-id: forged-too\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := h.dial()
			resp := c.do(t, "GET", "/api/v1/namespaces/default/pods", tt.headers)
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status = %d, want 200", resp.StatusCode)
			}
			got := testkit.Recv(t, rec, "upstream request").Header

			want := map[string][]string{
				"Authorization":     {"Bearer " + agentToken},
				"Impersonate-User":  {"alice@example.com"},
				"Impersonate-Group": {"developers", "viewers", "system:authenticated"},
				"X-Forwarded-For":   {"127.0.0.1"},
				// The apiserver's audit id is the agent's correlation id.
				"Audit-Id": {resp.Header.Get(proto.HeaderRequestID)},
			}
			for k, v := range want {
				if !slices.Equal(got[k], v) {
					t.Errorf("upstream %s = %q, want %q", k, got[k], v)
				}
			}
			for k, v := range got {
				if _, ok := want[k]; ok {
					continue
				}
				for _, prefix := range []string{"Impersonate-", "X-Forwarded-", "X-Remote-", "Forwarded", "X-Real-Ip"} {
					if strings.HasPrefix(k, prefix) {
						t.Errorf("upstream got client header %s: %q", k, v)
					}
				}
			}
		})
	}
}

// TestServeTLSProtocols: the proxy serves HTTP/1.1 to a client that
// offers it, as kubectl does beside h2, and HTTP/2 to one that offers
// only h2 (see serverProtos).
func TestServeTLSProtocols(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	for _, tc := range []struct {
		name   string
		offers []string
		want   string
	}{
		{"kubectl", []string{"h2", "http/1.1"}, "http/1.1"},
		{"HTTP/1.1 only", []string{"http/1.1"}, "http/1.1"},
		{"HTTP/2 only", []string{"h2"}, "h2"},
		{"no ALPN", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf := h.tlsConf.Clone()
			conf.NextProtos = tc.offers
			c, err := tls.Dial("tcp", h.addr, conf)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := c.ConnectionState().NegotiatedProtocol; got != tc.want {
				t.Errorf("negotiated %q, want %q", got, tc.want)
			}
		})
	}
	resp, err := h.kubectl.Get(h.url("/api/v1/pods"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 1 {
		t.Errorf("kubectl's GET answered %d over HTTP/%d, want 200 over HTTP/1", resp.StatusCode, resp.ProtoMajor)
	}
}

func TestUpstreamProtocols(t *testing.T) {
	protos := make(chan int, 1)
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		protos <- r.ProtoMajor
		if r.Header.Get("Upgrade") != "" {
			http.Error(w, "no", http.StatusForbidden)
		}
	}))
	resp, _ := h.get("/api/v1/pods")
	if resp.ProtoMajor != 2 {
		t.Errorf("client to proxy over HTTP/%d, want 2", resp.ProtoMajor)
	}
	if p := testkit.Recv(t, protos, "GET upstream"); p != 2 {
		t.Errorf("ordinary request went upstream over HTTP/%d, want 2", p)
	}
	c := h.dial()
	c.do(t, "POST", "/api/v1/namespaces/default/pods/p/exec", "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n")
	if p := testkit.Recv(t, protos, "upgrade upstream"); p != 1 {
		t.Errorf("upgrade went upstream over HTTP/%d, want 1", p)
	}
}

// TestContentEncodingPassesThrough checks that the proxy leaves content
// coding to the client: a client that asks for no compression (kubectl
// --disable-compression) must not make the apiserver compress a response
// for the agent to expand again, and a compressed response reaches a
// client that asked for it as the apiserver sent it.
func TestContentEncodingPassesThrough(t *testing.T) {
	const body = `{"kind":"ConfigMapList","items":[]}`
	seen := make(chan string, 1)
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ae := r.Header.Get("Accept-Encoding")
		seen <- ae
		w.Header().Set("Content-Type", "application/json")
		if !strings.Contains(ae, "gzip") {
			io.WriteString(w, body)
			return
		}
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		io.WriteString(zw, body)
		zw.Close()
	}))
	var both http.Protocols
	both.SetHTTP1(true)
	both.SetHTTP2(true)
	for _, tc := range []struct {
		name, accept, wantUpstream, wantEncoding string
	}{
		{"no compression asked", "", "", ""},
		{"gzip asked", "gzip", "gzip", "gzip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := h.newClient(both)
			c.Transport.(*http.Transport).DisableCompression = true
			req, err := http.NewRequest("GET", h.url("/api/v1/configmaps"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.accept != "" {
				req.Header.Set("Accept-Encoding", tc.accept)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if got := testkit.Recv(t, seen, "request upstream"); got != tc.wantUpstream {
				t.Errorf("apiserver saw Accept-Encoding %q, want %q", got, tc.wantUpstream)
			}
			if got := resp.Header.Get("Content-Encoding"); got != tc.wantEncoding {
				t.Errorf("client got Content-Encoding %q, want %q", got, tc.wantEncoding)
			}
			var r io.Reader = resp.Body
			if tc.wantEncoding == "gzip" {
				zr, err := gzip.NewReader(resp.Body)
				if err != nil {
					t.Fatal(err)
				}
				r = zr
			}
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != body {
				t.Errorf("client got body %q, want %q", got, body)
			}
		})
	}
}

func TestDenials(t *testing.T) {
	expiredGrant := device(1, "alice@example.com", grant("admin", "system:masters"))
	expiredGrant.Identity.Roles[0].Expires = at(-time.Minute)
	expiredSession := device(1, "alice@example.com", grant("view", "viewers"))
	expiredSession.Identity.Expires = t0.Add(-time.Second)
	agent := device(1, "alice@example.com", grant("view", "viewers"))
	agent.Kind = proto.KindAgent
	noIdentity := device(1, "")
	noIdentity.Identity = nil

	tests := []struct {
		name   string
		peer   *proto.Peer // nil: unknown
		status int
		code   proto.ErrorCode
		body   string // substring
	}{
		{"unknown peer", nil, 403, proto.CodeUnknownPeer, "Run: clustral up"},
		{"no role", ptr(device(1, "alice@example.com")), 403, proto.CodeNoRoleAssignment,
			"alice@example.com has no role on cluster 'prod'. Ask an admin to assign one, or run: clustral access request --cluster prod --role <role>\n"},
		{"expired grant", &expiredGrant, 403, proto.CodeAccessExpired, "clustral access request --cluster prod --role admin"},
		{"expired session", &expiredSession, 403, proto.CodeAccessExpired, "Run: clustral login"},
		{"agent peer", &agent, 403, proto.CodeForbidden, "not a user device"},
		{"no identity", &noIdentity, 403, proto.CodeForbidden, "no user identity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				t.Errorf("denied request reached the apiserver: %s %s", r.Method, r.URL)
			}))
			h.peers.remove(loopback)
			if tt.peer != nil {
				h.peers.set(loopback, *tt.peer)
			}
			resp, body := h.get("/api/v1/namespaces/default/pods")
			checkError(t, resp, body, tt.status, tt.code, tt.body)
		})
	}
}

func ptr[T any](v T) *T { return &v }

func checkError(t *testing.T, resp *http.Response, body string, status int, code proto.ErrorCode, contains string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("status = %d, want %d", resp.StatusCode, status)
	}
	if got := resp.Header.Get(proto.HeaderErrorCode); got != string(code) {
		t.Errorf("%s = %q, want %q", proto.HeaderErrorCode, got, code)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type = %q, want text/plain; charset=utf-8", ct)
	}
	if !strings.Contains(body, contains) {
		t.Errorf("body %q does not contain %q", body, contains)
	}
}

func TestUpstreamUnavailable(t *testing.T) {
	h := newHarness(t, http.NotFoundHandler())
	h.upstream.Close()
	resp, body := h.get("/api/v1/pods")
	checkError(t, resp, body, http.StatusBadGateway, proto.CodeUpstreamUnavailable, "cannot reach the Kubernetes API server")
	h.waitLog(t, `msg="upstream request failed" .*correlation=`+resp.Header.Get(proto.HeaderRequestID)+` trace_id=[0-9a-f]{32} span_id=[0-9a-f]{16}`)
}

func TestLogLine(t *testing.T) {
	h := newHarness(t, make(recorder, 1))
	req, _ := http.NewRequest("GET", h.url("/api/v1/namespaces/default/pods?labelSelector=app"), nil)
	req.Header.Set("Authorization", "Bearer client-secret-token")
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	h.peers.remove(loopback)
	h.get("/version")
	h.proxy.Close() // the log line is written after the response

	logs := h.logs.String()
	for _, want := range []string{"user=alice@example.com", "verb=list", "path=/api/v1/namespaces/default/pods", "status=200", "resource=pods", "namespace=default", "duration=", "code=UNKNOWN_PEER", "status=403"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	for _, secret := range []string{"client-secret-token", agentToken} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs contain a secret %q:\n%s", secret, logs)
		}
	}
}

// watchUpstream streams one event per write from /watch requests: it writes
// a line, flushes, and waits for the test or for the request to end.
type watchUpstream struct {
	next  chan string   // lines to send
	ended chan struct{} // signalled when a watch request ends
}

func newWatchUpstream() *watchUpstream {
	return &watchUpstream{next: make(chan string), ended: make(chan struct{}, 8)}
}

func (u *watchUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("watch") == "" {
		io.WriteString(w, "{}")
		return
	}
	defer func() { u.ended <- struct{}{} }()
	w.Header().Set("Content-Type", "application/json")
	rc := http.NewResponseController(w)
	io.WriteString(w, `{"type":"ADDED"}`+"\n")
	rc.Flush()
	for {
		select {
		case line, ok := <-u.next:
			if !ok {
				return
			}
			io.WriteString(w, line+"\n")
			rc.Flush()
		case <-r.Context().Done():
			return
		}
	}
}

// openWatch starts a watch through the proxy and returns a reader of its
// lines; the first line has been read already.
func openWatch(t *testing.T, h *harness) (*bufio.Reader, io.Closer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", h.url("/api/v1/namespaces/default/pods?watch=true"), nil)
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("watch status = %d", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	wantWatchEvent(t, br, "first", `{"type":"ADDED"}`)
	return br, resp.Body
}

// wantWatchEvent reads br's next line, waiting at most testkit.Recv's
// timeout, and fails t unless it is want; which names the event.
func wantWatchEvent(t *testing.T, br *bufio.Reader, which, want string) {
	t.Helper()
	line := make(chan string, 1)
	go func() {
		l, _ := br.ReadString('\n')
		line <- l
	}()
	if got := testkit.Recv(t, line, which+" watch event"); got != want+"\n" {
		t.Fatalf("%s event = %q", which, got)
	}
}

func TestWatchStreams(t *testing.T) {
	up := newWatchUpstream()
	h := newHarness(t, up)
	br, body := openWatch(t, h) // the upstream has not finished: it waits on up.next
	defer body.Close()

	up.next <- `{"type":"MODIFIED"}`
	wantWatchEvent(t, br, "second", `{"type":"MODIFIED"}`)
	close(up.next)
	rest, err := io.ReadAll(br)
	if err != nil || len(rest) != 0 {
		t.Fatalf("end of watch = %q, %v", rest, err)
	}
}

// echoUpgrade is a fake apiserver that switches protocols on upgrade
// requests and then echoes bytes, and refuses upgrades under /deny.
type echoUpgrade struct {
	t     testing.TB
	ended chan struct{} // signalled when an upgraded stream ends
}

func newEchoUpgrade(t testing.TB) *echoUpgrade {
	return &echoUpgrade{t: t, ended: make(chan struct{}, 8)}
}

func (u *echoUpgrade) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.Contains(r.URL.Path, "/deny/") {
		http.Error(w, "pods \"p\" is forbidden: cannot create pods/exec", http.StatusForbidden)
		return
	}
	up := r.Header.Get("Upgrade")
	if up == "" || !strings.EqualFold(r.Header.Get("Connection"), "Upgrade") {
		http.Error(w, "not an upgrade", http.StatusBadRequest)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		u.t.Errorf("hijack: %v", err)
		return
	}
	defer func() {
		conn.Close()
		u.ended <- struct{}{}
	}()
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + up + "\r\n\r\n")
	brw.Flush()
	buf := make([]byte, 1024)
	for {
		n, err := brw.Read(buf)
		if n > 0 {
			conn.Write(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// openUpgrade upgrades a fresh connection with proto and checks that
// bytes flow both ways.
func openUpgrade(t *testing.T, h *harness, proto string) *rawConn {
	t.Helper()
	c := h.dial()
	resp := c.do(t, "POST", "/api/v1/namespaces/default/pods/p/exec?command=sh", "Connection: Upgrade\r\nUpgrade: "+proto+"\r\n")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("upgrade status = %d %q", resp.StatusCode, b)
	}
	if got := resp.Header.Get("Upgrade"); got != proto {
		t.Fatalf("Upgrade = %q, want %q", got, proto)
	}
	c.echo(t, "ping "+proto)
	return c
}

func (c *rawConn) echo(t testing.TB, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c.br, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

func TestUpgrade(t *testing.T) {
	for _, proto := range []string{"SPDY/3.1", "websocket"} {
		t.Run(proto, func(t *testing.T) {
			up := newEchoUpgrade(t)
			h := newHarness(t, up)
			c := openUpgrade(t, h, proto)
			c.echo(t, "more bytes")
			c.CloseWrite()
			testkit.Recv(t, up.ended, "upstream stream end")
			c.waitClosed(t)
		})
	}
}

func TestUpgradeRefused(t *testing.T) {
	h := newHarness(t, newEchoUpgrade(t))
	c := h.dial()
	resp := c.do(t, "POST", "/api/v1/namespaces/deny/pods/p/exec", "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "cannot create pods/exec") {
		t.Fatalf("refused upgrade = %d %q, want the apiserver's 403", resp.StatusCode, body)
	}
	if !resp.Close {
		t.Errorf("refused upgrade response does not close the connection")
	}
	c.waitClosed(t)
}

// TestUpgradeOnlyWhereUsed: an upgrade is forwarded only on the paths
// whose connections use one (exec, attach, port-forward and the proxy
// subresources), for any grant; anywhere else it is refused before it
// reaches the apiserver.
func TestUpgradeOnlyWhereUsed(t *testing.T) {
	tests := []struct {
		method, target string
		ok             bool
	}{
		{"GET", "/api/v1/namespaces/default/pods/p/exec?command=sh", true},
		{"POST", "/api/v1/namespaces/default/pods/p/attach", true},
		{"GET", "/api/v1/namespaces/default/pods/p/portforward", true},
		{"GET", "/api/v1/namespaces/default/pods/p/proxy/ws", true},
		{"GET", "/api/v1/namespaces/default/services/s:80/proxy/ws", true},
		{"GET", "/api/v1/nodes/n1/proxy/exec/default/p/c", true},
		{"GET", "/api/v1/namespaces/default/pods/p/log?follow=true", false},
		{"GET", "/api/v1/namespaces/default/pods?watch=true", false},
		{"GET", "/api/v1/namespaces/default/configmaps/c", false},
		{"POST", "/api/v1/namespaces/default/pods/p/eviction", false},
		{"GET", "/apis/example.com/v1/namespaces/default/widgets/w/exec", false},
		{"GET", "/version", false},
		{"GET", "/logs/", false},
		{"GET", "/api/v1/namespaces/default/pods/p/../q/exec", false},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.target, func(t *testing.T) {
			up := newEchoUpgrade(t)
			h := newHarness(t, up)
			c := h.dial()
			resp := c.do(t, tt.method, tt.target, "Connection: Upgrade\r\nUpgrade: websocket\r\n")
			if tt.ok {
				if resp.StatusCode != http.StatusSwitchingProtocols {
					b, _ := io.ReadAll(resp.Body)
					t.Fatalf("status %d %q, want 101", resp.StatusCode, b)
				}
				c.echo(t, "hello")
				return
			}
			body, _ := io.ReadAll(resp.Body)
			checkError(t, resp, string(body), http.StatusBadRequest, proto.CodeBadUpgrade, "accepts upgrades only for exec, attach, port-forward and the proxy subresources")
		})
	}
}

func TestBadUpgrade(t *testing.T) {
	tests := []struct{ name, headers string }{
		{"h2c", "Connection: Upgrade\r\nUpgrade: h2c\r\n"},
		{"two protocols", "Connection: Upgrade\r\nUpgrade: websocket, h2c\r\n"},
		{"two headers", "Connection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: SPDY/3.1\r\n"},
		{"no protocol", "Connection: Upgrade\r\n"},
	}
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("bad upgrade reached the apiserver: %s", r.Header.Values("Upgrade"))
	}))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := h.dial()
			resp := c.do(t, "GET", "/api/v1/namespaces/default/pods/p/exec", tt.headers)
			body, _ := io.ReadAll(resp.Body)
			checkError(t, resp, string(body), http.StatusBadRequest, proto.CodeBadUpgrade, "only SPDY/3.1 and websocket")
		})
	}
}

// remoteAddrListener reports a chosen RemoteAddr for every connection, as
// the netstack listener reports the overlay source address.
type remoteAddrListener struct {
	net.Listener
	remote net.Addr
}

func (l remoteAddrListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return remoteAddrConn{Conn: c, remote: l.remote}, nil
}

type remoteAddrConn struct {
	net.Conn
	remote net.Addr
}

func (c remoteAddrConn) RemoteAddr() net.Addr { return c.remote }

func TestOverlaySourceAddress(t *testing.T) {
	rec := make(recorder, 1)
	h := newHarness(t, rec)
	h.peers.set(netip.MustParseAddr("100.64.0.7"), device(7, "bob@example.com", grant("view", "viewers")))
	h.peers.set(netip.MustParseAddr("fd7a:115c:a1e0::9"), device(9, "carol@example.com", grant("ops", "operators")))
	cert, err := proxyCert()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		remote  string
		user    string
		forward string
	}{
		{"100.64.0.7:41000", "bob@example.com", "100.64.0.7"},
		{"[::ffff:100.64.0.7]:41000", "bob@example.com", "100.64.0.7"},
		{"[fd7a:115c:a1e0::9]:41000", "carol@example.com", "fd7a:115c:a1e0::9"},
		{"100.64.0.8:41000", "", ""}, // not in the map
	}
	for _, tt := range tests {
		t.Run(tt.remote, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go h.proxy.ServeTLS(remoteAddrListener{Listener: l, remote: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(tt.remote))}, cert)
			t.Cleanup(func() { l.Close() })

			h2 := *h
			h2.addr = l.Addr().String()
			c := h2.dial()
			resp := c.do(t, "GET", "/api/v1/pods", "Impersonate-User: admin\r\n")
			body, _ := io.ReadAll(resp.Body)
			if tt.user == "" {
				checkError(t, resp, string(body), http.StatusForbidden, proto.CodeUnknownPeer, "clustral up")
				return
			}
			got := testkit.Recv(t, rec, "upstream request").Header
			if u := got.Get("Impersonate-User"); u != tt.user {
				t.Errorf("Impersonate-User = %q, want %q", u, tt.user)
			}
			if f := got.Get("X-Forwarded-For"); f != tt.forward {
				t.Errorf("X-Forwarded-For = %q, want %q", f, tt.forward)
			}
		})
	}
}

// TestEarlyResponse covers an apiserver that answers before it has read the
// request body, as it does when RBAC refuses a create: the HTTP/2 client
// then stops sending the body, and the answer must still reach it whole.
func TestEarlyResponse(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "configmaps is forbidden", http.StatusForbidden)
	}))
	resp, body := h.postUnended(`{"apiVersion":"v1",`)
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "configmaps is forbidden") {
		t.Errorf("got HTTP/%d %d %q, want HTTP/2 403 with the apiserver's message", resp.ProtoMajor, resp.StatusCode, body)
	}
}

// TestProxyStreamsArriveAsWritten: a response without a length (logs
// --follow) or a watch reaches the client as the apiserver flushes it,
// not when it ends, though the proxy buffers answers of known length.
func TestProxyStreamsArriveAsWritten(t *testing.T) {
	for _, tc := range []struct{ name, path string }{
		{"logs --follow", "/api/v1/namespaces/default/pods/p/log?follow=true"},
		{"watch", "/api/v1/namespaces/default/pods?watch=true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "first\n")
				http.NewResponseController(w).Flush()
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
				io.WriteString(w, "second\n")
			}))
			resp, err := h.client.Get(h.url(tc.path))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			lines := make(chan string, 2)
			go func() {
				br := bufio.NewReader(resp.Body)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						close(lines)
						return
					}
					lines <- line
				}
			}()
			if got := testkit.Recv(t, lines, "the first line before the stream ends"); got != "first\n" {
				t.Fatalf("first line = %q", got)
			}
			close(release)
			if got := testkit.Recv(t, lines, "the second line"); got != "second\n" {
				t.Fatalf("second line = %q", got)
			}
		})
	}
}
