package coordinator

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// shortTimeouts are the server timeouts of serveShort: short enough that a
// test waits for them, long enough for a loaded machine to answer within.
var shortTimeouts = serverTimeouts{readHeader: 300 * time.Millisecond, read: 300 * time.Millisecond, write: 300 * time.Millisecond, idle: 300 * time.Millisecond}

// serveShort serves e's coordinator through Serve, as the coordinator
// command does, with shortTimeouts, and returns its address. t's cleanup
// stops it. Call it before any request reaches the coordinator, which
// reads the timeouts.
func serveShort(t *testing.T, e *testEnv) string {
	t.Helper()
	e.srv.timeouts = shortTimeouts
	return serve(t, e.srv, "tcp")
}

// closedWithin reads from c until the server closes it, and returns how
// long that took; it fails t if c is still open after limit.
func closedWithin(t *testing.T, c net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", limit)
	}
	return time.Since(start)
}

// openStream GETs the long-lived stream at url, with the credential that
// authorize sets, and returns its response, which must be 200 OK. t's
// cleanup closes the body.
func openStream(t *testing.T, url string, authorize func(*http.Request)) *http.Response {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	authorize(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d", url, resp.StatusCode)
	}
	return resp
}

// TestServerTimeoutsCutSlowClients: a client that sends its headers or its
// body slowly, or keeps an idle connection, is disconnected by the server's
// timeouts; none can hold a connection open for long without credentials.
func TestServerTimeoutsCutSlowClients(t *testing.T) {
	e := newTestEnv(t)
	addr := serveShort(t, e)
	for _, tc := range []struct {
		name string
		send string
		// answered: the server answers one request before the
		// connection goes idle.
		answered bool
	}{
		{"headers never end", "POST /api/v1/login/poll HTTP/1.1\r\nHost: x\r\n", false},
		{"body never ends", "POST /api/v1/login/poll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"handle\":", false},
		{"idle keep-alive", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, tc.send); err != nil {
				t.Fatal(err)
			}
			if tc.answered {
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || resp.Close {
					t.Fatalf("healthz = %d (close %v), want 200 on a kept-alive connection", resp.StatusCode, resp.Close)
				}
			}
			took := closedWithin(t, c, 10*time.Second)
			t.Logf("closed after %v", took)
		})
	}
}

// TestLongLivedRoutesOutliveTimeouts: the map stream of an authenticated
// node stays open, and keeps delivering, long after the server's read and
// write timeouts; the backup, written in chunks, is not cut by them.
func TestLongLivedRoutesOutliveTimeouts(t *testing.T) {
	e := newTestEnv(t)
	addr := serveShort(t, e)
	admin, sam := e.login("admin@example.com"), e.login("sam@example.com")
	cl := e.createCluster(admin.Token, "prod")
	e.must("POST", "/api/v1/roles", admin.Token, proto.Role{Name: "viewer", Groups: []string{"viewers"}}, nil)
	e.must("POST", "/api/v1/assignments", admin.Token, proto.Assignment{User: "sam@example.com", Role: "viewer", Cluster: "prod"}, nil)
	agent := e.registerAgent(cl.JoinToken, "")

	resp := openStream(t, "http://"+addr+"/api/v1/map", func(r *http.Request) {
		r.Header.Set("Authorization", "Bearer "+agent.NodeToken)
	})
	msgs := make(chan proto.MapMessage, 16)
	go func() {
		defer close(msgs)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 4<<20)
		for sc.Scan() {
			var m proto.MapMessage
			if json.Unmarshal(sc.Bytes(), &m) == nil && !m.KeepAlive {
				msgs <- m
			}
		}
	}()
	next := func() proto.MapMessage {
		t.Helper()
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatal("map stream ended")
			}
			return m
		case <-time.After(5 * time.Second):
			t.Fatal("no map message within 5s")
		}
		panic("unreachable")
	}
	if m := next(); !m.Snapshot {
		t.Fatalf("first message = %+v, want the snapshot", m)
	}
	// Past every timeout of the server, several times over: only time
	// passing can show that nothing cut the stream.
	time.Sleep(4 * shortTimeouts.read)
	key := newKey(t)
	e.must("POST", "/api/v1/devices", sam.Token, proto.RegisterDeviceRequest{PublicKey: key}, nil)
	if m := next(); len(m.Peers) != 1 || m.Peers[0].Key != key {
		t.Fatalf("delta after the timeouts = %+v, want sam's new device", m)
	}

	bresp := openStream(t, "http://"+addr+"/api/v1/admin/backup", func(r *http.Request) {
		r.Header.Set("Authorization", "Bearer "+admin.Token)
	})
	n, err := io.Copy(io.Discard, bresp.Body)
	if err != nil || n == 0 {
		t.Fatalf("backup = %d bytes, %v", n, err)
	}
}

// TestRelayOutlivesTimeouts: a relay connection carries packets long after
// the server's timeouts. (The relay takes the connection over from the
// HTTP server, which clears its deadlines; a relay that streamed through
// the server instead would have to lift them as the map stream does.)
func TestRelayOutlivesTimeouts(t *testing.T) {
	e := newTestEnv(t)
	addr := serveShort(t, e)
	m := newRelayMesh(e)
	dial := func(token string) *relayPeer {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		req, _ := http.NewRequest("GET", "http://"+addr+proto.RelayPath, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", proto.RelayUpgrade)
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("relay = %d", resp.StatusCode)
		}
		return &relayPeer{t: t, conn: c, br: br, buf: make([]byte, proto.RelayFrameHeaderLen+proto.MaxRelayPayload)}
	}
	agent, alice := dial(m.agent.NodeToken), dial(m.alice.NodeToken)
	// Past every timeout of the server: only time passing can show that
	// nothing cut the connections.
	time.Sleep(4 * shortTimeouts.read)
	alice.send(m.agentKey, []byte("late"))
	if _, pkt, ok := agent.recv(5 * time.Second); !ok || string(pkt) != "late" {
		t.Fatalf("agent got %q %v after the timeouts, want alice's packet", pkt, ok)
	}
}

// TestConsoleStreamsEndAtShutdown: an open event stream of the web
// console ends when ListenAndServe stops, which then returns at once
// and without error; before, the stream held the HTTP server's Shutdown
// until its 10 s deadline.
func TestConsoleStreamsEndAtShutdown(t *testing.T) {
	e := newTestEnvWith(t, func(c *Config) { c.STUNListen = "off" })
	admin := e.login("admin@example.com")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- e.srv.ListenAndServe(ctx, func(a net.Addr) { ready <- a }) }()
	addr := testkit.Recv(t, ready, "the coordinator to listen")

	resp := openStream(t, "http://"+addr.String()+"/approvals/events", func(r *http.Request) {
		r.AddCookie(&http.Cookie{Name: "clustral_console", Value: admin.Token})
	})
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() {
		t.Fatalf("the stream sent nothing: %v", sc.Err())
	}
	cancel()
	if err := testkit.Recv(t, done, "ListenAndServe to return"); err != nil {
		t.Errorf("ListenAndServe = %v, want nil: an open console stream held the shutdown", err)
	}
	for sc.Scan() {
	}
}
