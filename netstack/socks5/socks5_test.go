package socks5

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
	"golang.org/x/net/proxy"
)

const (
	testUser = "session-3f9a"
	testPass = "s3cret-per-session"
)

type dialed struct {
	network, host string
	port          uint16
}

// newServer serves SOCKS5 on a loopback port with dial as its hook and
// returns the address. Cleanup closes the server and checks that Serve
// returned ErrServerClosed.
func newServer(t *testing.T, dial DialFunc, opts ...func(*Server)) (string, *Server) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Username: testUser, Password: testPass, Dial: dial}
	for _, o := range opts {
		o(s)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return l.Addr().String(), s
}

func rawConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// pipeDial is a Dial hook that records each call and returns one end of
// a pipe whose other end is already closed.
func pipeDial(calls chan<- dialed) DialFunc {
	return func(ctx context.Context, network, host string, port uint16) (net.Conn, error) {
		calls <- dialed{network, host, port}
		a, b := net.Pipe()
		b.Close()
		return a, nil
	}
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func authMsg(user, pass string) []byte {
	return cat([]byte{1, byte(len(user))}, []byte(user), []byte{byte(len(pass))}, []byte(pass))
}

var (
	greet      = []byte{5, 1, 2}
	methodOK   = []byte{5, 2}
	authOK     = []byte{1, 0}
	authFailed = []byte{1, 1}
	goodAuth   = authMsg(testUser, testPass)
	// reply with the bound address a pipe upstream reports: 0.0.0.0:0.
	reply = func(r Reply) []byte { return []byte{5, byte(r), 0, 1, 0, 0, 0, 0, 0, 0} }
)

func TestHandshake(t *testing.T) {
	tests := []struct {
		name     string
		send     []byte
		want     []byte  // everything the server sends before closing
		wantDial *dialed // nil: Dial must not be called
	}{
		{
			name:     "connect ipv4",
			send:     cat(greet, goodAuth, []byte{5, 1, 0, 1, 10, 1, 2, 3, 1, 187}),
			want:     cat(methodOK, authOK, reply(ReplySucceeded)),
			wantDial: &dialed{"tcp", "10.1.2.3", 443},
		},
		{
			name:     "connect ipv6",
			send:     cat(greet, goodAuth, []byte{5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1f, 0x90}),
			want:     cat(methodOK, authOK, reply(ReplySucceeded)),
			wantDial: &dialed{"tcp", "2001:db8::1", 8080},
		},
		{
			name:     "connect domain",
			send:     cat(greet, goodAuth, []byte{5, 1, 0, 3, 22}, []byte("prod.clustral.internal"), []byte{1, 187}),
			want:     cat(methodOK, authOK, reply(ReplySucceeded)),
			wantDial: &dialed{"tcp", "prod.clustral.internal", 443},
		},
		{
			name:     "several methods offered",
			send:     cat([]byte{5, 3, 0, 1, 2}, goodAuth, []byte{5, 1, 0, 1, 10, 1, 2, 3, 0, 80}),
			want:     cat(methodOK, authOK, reply(ReplySucceeded)),
			wantDial: &dialed{"tcp", "10.1.2.3", 80},
		},
		{
			name: "wrong password",
			send: cat(greet, authMsg(testUser, "guess")),
			want: cat(methodOK, authFailed),
		},
		{
			name: "wrong username",
			send: cat(greet, authMsg("someone", testPass)),
			want: cat(methodOK, authFailed),
		},
		{
			name: "empty credential",
			send: cat(greet, authMsg("", "")),
			want: cat(methodOK, authFailed),
		},
		{
			name: "no auth method only",
			send: []byte{5, 1, 0},
			want: []byte{5, 0xff},
		},
		{
			name: "no methods",
			send: []byte{5, 0},
			want: []byte{5, 0xff},
		},
		{
			name: "socks4 greeting",
			send: []byte{4, 1, 0, 80, 10, 1, 2, 3, 0},
			want: nil,
		},
		{
			name: "bad auth version",
			send: cat(greet, []byte{5, 1, 'u', 1, 'p'}),
			want: cat(methodOK, authFailed),
		},
		{
			name: "bind",
			send: cat(greet, goodAuth, []byte{5, 2, 0, 1, 10, 1, 2, 3, 0, 80}),
			want: cat(methodOK, authOK, reply(ReplyCommandNotSupported)),
		},
		{
			name: "udp associate",
			send: cat(greet, goodAuth, []byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0}),
			want: cat(methodOK, authOK, reply(ReplyCommandNotSupported)),
		},
		{
			name: "unknown address type",
			send: cat(greet, goodAuth, []byte{5, 1, 0, 9, 10, 1, 2, 3, 0, 80}),
			want: cat(methodOK, authOK, reply(ReplyAddrTypeNotSupported)),
		},
		{
			name: "bad request version",
			send: cat(greet, goodAuth, []byte{4, 1, 0, 1, 10, 1, 2, 3, 0, 80}),
			want: cat(methodOK, authOK, reply(ReplyGeneralFailure)),
		},
		{
			name: "nonzero reserved byte",
			send: cat(greet, goodAuth, []byte{5, 1, 1, 1, 10, 1, 2, 3, 0, 80}),
			want: cat(methodOK, authOK, reply(ReplyGeneralFailure)),
		},
		{
			name: "bad domain",
			send: cat(greet, goodAuth, []byte{5, 1, 0, 3, 7}, []byte("a b/c:d"), []byte{0, 80}),
			want: cat(methodOK, authOK, reply(ReplyHostUnreachable)),
		},
		{
			name: "empty domain",
			send: cat(greet, goodAuth, []byte{5, 1, 0, 3, 0, 0, 80}),
			want: cat(methodOK, authOK, reply(ReplyHostUnreachable)),
		},
		{
			name: "port zero",
			send: cat(greet, goodAuth, []byte{5, 1, 0, 1, 10, 1, 2, 3, 0, 0}),
			want: cat(methodOK, authOK, reply(ReplyHostUnreachable)),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := make(chan dialed, 1)
			addr, _ := newServer(t, pipeDial(calls))
			c := rawConn(t, addr)
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(c)
			if err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("read: %v", err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("server sent %v, want %v", got, tt.want)
			}
			select {
			case d := <-calls:
				if tt.wantDial == nil {
					t.Fatalf("Dial called with %+v", d)
				}
				if d != *tt.wantDial {
					t.Fatalf("Dial(%+v), want %+v", d, *tt.wantDial)
				}
			default:
				if tt.wantDial != nil {
					t.Fatalf("Dial not called, want %+v", *tt.wantDial)
				}
			}
		})
	}
}

func TestDialErrorReplies(t *testing.T) {
	tests := []struct {
		err  error
		want Reply
	}{
		{ErrNotAllowed, ReplyNotAllowed},
		{fmt.Errorf("cluster prod: %w", ErrNotAllowed), ReplyNotAllowed},
		{ErrNetworkUnreachable, ReplyNetworkUnreachable},
		{&net.OpError{Op: "dial", Err: syscall.ENETUNREACH}, ReplyNetworkUnreachable},
		{ErrHostUnreachable, ReplyHostUnreachable},
		{&net.OpError{Op: "dial", Err: syscall.EHOSTUNREACH}, ReplyHostUnreachable},
		{&net.DNSError{Err: "no such host", Name: "x.clustral.internal", IsNotFound: true}, ReplyHostUnreachable},
		{context.DeadlineExceeded, ReplyHostUnreachable},
		{&net.OpError{Op: "dial", Err: syscall.ETIMEDOUT}, ReplyHostUnreachable},
		{ErrConnectionRefused, ReplyConnectionRefused},
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, ReplyConnectionRefused},
		{errors.New("something else"), ReplyGeneralFailure},
	}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			if got := ReplyFor(tt.err); got != tt.want {
				t.Fatalf("ReplyFor = %v, want %v", got, tt.want)
			}
			addr, _ := newServer(t, func(context.Context, string, string, uint16) (net.Conn, error) {
				return nil, tt.err
			})
			c := rawConn(t, addr)
			c.Write(cat(greet, goodAuth, []byte{5, 1, 0, 1, 10, 1, 2, 3, 0, 80}))
			got, _ := io.ReadAll(c)
			if want := cat(methodOK, authOK, reply(tt.want)); !bytes.Equal(got, want) {
				t.Fatalf("server sent %v, want %v", got, want)
			}
		})
	}
}

// echoServer accepts connections on loopback, reads each until EOF and
// then answers with the bytes it read, upper-cased by nothing: it echoes
// after the client's half-close, which only works if the proxy forwards
// the half-close.
func echoServer(t *testing.T) string {
	t.Helper()
	return testkit.ServeTCP(t, func(c net.Conn) {
		if b, err := io.ReadAll(c); err == nil {
			c.Write(b)
		}
	})
}

// meshDial resolves the names in hosts to loopback addresses and refuses
// everything else, as the node's resolver refuses unknown clusters.
func meshDial(hosts map[string]string) DialFunc {
	return func(ctx context.Context, network, host string, port uint16) (net.Conn, error) {
		target, ok := hosts[host]
		if !ok {
			return nil, fmt.Errorf("resolve %s: %w", host, ErrHostUnreachable)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, target)
	}
}

func TestXNetProxyClient(t *testing.T) {
	echo := echoServer(t)
	addr, _ := newServer(t, meshDial(map[string]string{"echo.clustral.internal": echo}))

	tests := []struct {
		name    string
		auth    *proxy.Auth
		target  string
		wantErr bool
	}{
		{"ok", &proxy.Auth{User: testUser, Password: testPass}, "echo.clustral.internal:7", false},
		{"wrong password", &proxy.Auth{User: testUser, Password: "nope"}, "echo.clustral.internal:7", true},
		{"no auth", nil, "echo.clustral.internal:7", true},
		{"unknown host", &proxy.Auth{User: testUser, Password: testPass}, "nope.clustral.internal:7", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := proxy.SOCKS5("tcp", addr, tt.auth, proxy.Direct)
			if err != nil {
				t.Fatal(err)
			}
			c, err := d.Dial("tcp", tt.target)
			if tt.wantErr {
				if err == nil {
					c.Close()
					t.Fatal("dial through proxy succeeded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			msg := bytes.Repeat([]byte("clustral "), 100000)
			go func() {
				c.Write(msg)
				c.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("echoed %d bytes that differ from the %d sent", len(got), len(msg))
			}
		})
	}
}

// TestHTTPProxyURL does what kubectl does with proxy-url: net/http with a
// socks5:// proxy carrying the credential.
func TestHTTPProxyURL(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s %s", r.Host, r.URL.Path)
	}))
	t.Cleanup(api.Close)
	addr, _ := newServer(t, meshDial(map[string]string{"prod.clustral.internal": api.Listener.Addr().String()}))

	tests := []struct {
		name     string
		user     *url.Userinfo
		wantBody string
	}{
		{"credential", url.UserPassword(testUser, testPass), "hello prod.clustral.internal /api"},
		{"wrong credential", url.UserPassword(testUser, "x"), ""},
		{"no credential", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pu := &url.URL{Scheme: "socks5", Host: addr, User: tt.user}
			tr := &http.Transport{Proxy: http.ProxyURL(pu)}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			resp, err := client.Get("http://prod.clustral.internal/api")
			if tt.wantBody == "" {
				if err == nil {
					resp.Body.Close()
					t.Fatal("request through proxy succeeded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if string(body) != tt.wantBody {
				t.Fatalf("body %q, want %q", body, tt.wantBody)
			}
		})
	}
}

// handshake authenticates on c and connects to host:port by name.
func handshake(t *testing.T, c net.Conn, host string, port uint16) {
	t.Helper()
	c.Write(cat(greet, goodAuth, []byte{5, 1, 0, 3, byte(len(host))}, []byte(host), []byte{byte(port >> 8), byte(port)}))
	resp := make([]byte, len(methodOK)+len(authOK)+4)
	if _, err := io.ReadFull(c, resp); err != nil {
		t.Fatal(err)
	}
	if resp[5] != byte(ReplySucceeded) {
		t.Fatalf("reply %v", Reply(resp[5]))
	}
	alen := 4
	if resp[7] == atypIPv6 {
		alen = 16
	}
	io.ReadFull(c, make([]byte, alen+2))
}

func TestHalfClose(t *testing.T) {
	echo := echoServer(t)
	addr, _ := newServer(t, meshDial(map[string]string{"echo": echo}))
	c := rawConn(t, addr)
	handshake(t, c, "echo", 7)
	c.Write([]byte("hello"))
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hello" {
		t.Fatalf("got %q, %v; want hello", got, err)
	}
}

func TestCloseEndsConnections(t *testing.T) {
	// An upstream that never answers.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	addr, srv := newServer(t, meshDial(map[string]string{"quiet": l.Addr().String()}))
	c := rawConn(t, addr)
	handshake(t, c, "quiet", 1)
	up := <-accepted
	defer up.Close()

	srv.Close()
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes after Close, want an error", n)
	}
	up.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := up.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("upstream read after Close = %v, want EOF", err)
	}
	if err := srv.Serve(l); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Close = %v", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	addr, _ := newServer(t, pipeDial(make(chan dialed, 1)), func(s *Server) {
		s.HandshakeTimeout = 100 * time.Millisecond
	})
	c := rawConn(t, addr)
	c.Write([]byte{5, 1}) // a greeting that never finishes
	start := time.Now()
	got, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Fatalf("server sent %v", got)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("server held a stalled handshake for %v", d)
	}
}

func TestServeRequiresConfig(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Dial: pipeDial(nil)}
	if err := s.Serve(l); err == nil || errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve without credential = %v, want a configuration error", err)
	}
}

func FuzzReadRequest(f *testing.F) {
	f.Add([]byte{5, 1, 0, 1, 10, 1, 2, 3, 1, 187})
	f.Add(cat([]byte{5, 1, 0, 3, 22}, []byte("prod.clustral.internal"), []byte{1, 187}))
	f.Add([]byte{5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1f, 0x90})
	f.Add([]byte{5, 2, 0, 1, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{5, 1, 0, 3, 0, 0, 80})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		req, rep, err := readRequest(r)
		if err != nil {
			if req != (request{}) {
				t.Fatalf("error %v with request %+v", err, req)
			}
			return
		}
		if rep != ReplySucceeded {
			t.Fatalf("no error but reply %v", rep)
		}
		consumed := data[:len(data)-r.Len()]
		if enc := req.encode(); !bytes.Equal(enc, consumed) {
			t.Fatalf("request %+v encodes to %v, parsed from %v", req, enc, consumed)
		}
	})
}
