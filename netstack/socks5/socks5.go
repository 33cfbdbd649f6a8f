// Package socks5 is a small, strict SOCKS5 server (RFC 1928) for the
// loopback proxy of `clustral up`: CONNECT only, and only with
// username/password authentication (RFC 1929) against one per-session
// credential, so that other local users cannot ride the user's identity.
//
// The server does not resolve names or dial by itself: every CONNECT goes
// to the Dial hook with the requested host, which may be a domain name
// such as prod.clustral.internal, so the caller decides what a name means
// and which network carries the connection.
package socks5

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// DialFunc opens the upstream connection of a CONNECT request. host is an
// IP literal or a domain name exactly as the client sent it. The error
// selects the reply code; see Reply.
type DialFunc func(ctx context.Context, network, host string, port uint16) (net.Conn, error)

// Errors a DialFunc may return (or wrap) to choose the reply code sent to
// the client. Errors that wrap syscall.ENETUNREACH, EHOSTUNREACH,
// ECONNREFUSED or ETIMEDOUT, a *net.DNSError and context.DeadlineExceeded
// are recognized too; anything else is a general failure.
var (
	ErrNotAllowed         = errors.New("connection not allowed by ruleset")
	ErrNetworkUnreachable = errors.New("network unreachable")
	ErrHostUnreachable    = errors.New("host unreachable")
	ErrConnectionRefused  = errors.New("connection refused")
)

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("socks5: server closed")

// Reply is a SOCKS5 reply code (RFC 1928 section 6).
type Reply byte

// Reply codes.
const (
	ReplySucceeded            Reply = 0x00
	ReplyGeneralFailure       Reply = 0x01
	ReplyNotAllowed           Reply = 0x02
	ReplyNetworkUnreachable   Reply = 0x03
	ReplyHostUnreachable      Reply = 0x04
	ReplyConnectionRefused    Reply = 0x05
	ReplyTTLExpired           Reply = 0x06
	ReplyCommandNotSupported  Reply = 0x07
	ReplyAddrTypeNotSupported Reply = 0x08
)

func (r Reply) String() string {
	switch r {
	case ReplySucceeded:
		return "succeeded"
	case ReplyGeneralFailure:
		return "general failure"
	case ReplyNotAllowed:
		return "not allowed"
	case ReplyNetworkUnreachable:
		return "network unreachable"
	case ReplyHostUnreachable:
		return "host unreachable"
	case ReplyConnectionRefused:
		return "connection refused"
	case ReplyTTLExpired:
		return "TTL expired"
	case ReplyCommandNotSupported:
		return "command not supported"
	case ReplyAddrTypeNotSupported:
		return "address type not supported"
	}
	return "reply " + strconv.Itoa(int(r))
}

// ReplyFor maps a dial error to the reply code the client gets.
func ReplyFor(err error) Reply {
	var dnsErr *net.DNSError
	switch {
	case err == nil:
		return ReplySucceeded
	case errors.Is(err, ErrNotAllowed):
		return ReplyNotAllowed
	case errors.Is(err, ErrNetworkUnreachable), errors.Is(err, syscall.ENETUNREACH):
		return ReplyNetworkUnreachable
	case errors.Is(err, ErrHostUnreachable), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &dnsErr):
		return ReplyHostUnreachable
	case errors.Is(err, ErrConnectionRefused), errors.Is(err, syscall.ECONNREFUSED):
		return ReplyConnectionRefused
	}
	return ReplyGeneralFailure
}

// Defaults for the Server's timeouts.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDialTimeout      = 30 * time.Second
)

// Server is a SOCKS5 server. Set its fields before the first Serve and do
// not change them afterwards. Serve and Close are safe for concurrent use.
type Server struct {
	// Username and Password form the one credential clients must
	// present. Both are required; they are compared in constant time
	// and never logged.
	Username, Password string

	// Dial opens the upstream connection of each CONNECT. Required.
	Dial DialFunc

	// HandshakeTimeout bounds the time from accept to the reply,
	// excluding the dial; DefaultHandshakeTimeout if zero.
	HandshakeTimeout time.Duration

	// DialTimeout bounds each call to Dial; DefaultDialTimeout if zero.
	DialTimeout time.Duration

	// Logger receives one debug line per connection; slog.Default() if
	// nil.
	Logger *slog.Logger

	initOnce sync.Once
	ctx      context.Context
	cancel   context.CancelFunc
	userSum  [sha256.Size]byte
	passSum  [sha256.Size]byte

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.userSum = sha256.Sum256([]byte(s.Username))
		s.passSum = sha256.Sum256([]byte(s.Password))
		s.listeners = make(map[net.Listener]struct{})
		s.conns = make(map[net.Conn]struct{})
	})
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// Serve accepts connections on l and serves each in its own goroutine
// until l fails or Close is called. It closes l when it returns. After
// Close it returns ErrServerClosed. The caller binds l, normally to
// 127.0.0.1.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	if s.Dial == nil || s.Username == "" || s.Password == "" {
		l.Close()
		return errors.New("socks5: Dial, Username and Password are required")
	}
	if !s.track(l) {
		l.Close()
		return ErrServerClosed
	}
	defer s.untrack(l)
	defer l.Close()

	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logger().Warn("socks5 accept", "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("socks5: accept: %w", err)
		}
		backoff = 0
		if !s.trackConn(c) {
			c.Close()
			return ErrServerClosed
		}
		go func() {
			defer s.wg.Done()
			defer s.untrackConn(c)
			s.serveConn(c)
		}()
	}
}

// Close stops every Serve, closes every client and upstream connection,
// and waits for the connection handlers to return. It is idempotent.
func (s *Server) Close() error {
	s.init()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.closed = true
	s.cancel()
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) track(l net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *Server) untrack(l net.Listener) {
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
}

// trackConn registers c, which Close will close, and adds one to wg.
func (s *Server) trackConn(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrackConn(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// serveConn runs one client connection to completion and closes it.
func (s *Server) serveConn(c net.Conn) {
	defer c.Close()
	log := s.logger().With("client", c.RemoteAddr().String())
	hto := s.HandshakeTimeout
	if hto <= 0 {
		hto = DefaultHandshakeTimeout
	}
	c.SetDeadline(time.Now().Add(hto))

	if err := s.negotiate(c); err != nil {
		log.Debug("socks5 handshake failed", "err", err)
		return
	}
	req, rep, err := readRequest(c)
	if err != nil {
		log.Debug("socks5 bad request", "err", err, "reply", rep)
		if rep != ReplySucceeded {
			writeReply(c, rep, netip.AddrPort{})
		}
		return
	}
	log = log.With("target", req.String())

	dto := s.DialTimeout
	if dto <= 0 {
		dto = DefaultDialTimeout
	}
	ctx, cancel := context.WithTimeout(s.ctx, dto)
	up, err := s.Dial(ctx, "tcp", req.host, req.port)
	cancel()
	if err != nil {
		rep := ReplyFor(err)
		log.Debug("socks5 dial failed", "err", err, "reply", rep)
		writeReply(c, rep, netip.AddrPort{})
		return
	}
	defer up.Close()
	if !s.trackConn(up) {
		return
	}
	defer s.wg.Done()
	defer s.untrackConn(up)

	var bound netip.AddrPort
	if ta, ok := up.LocalAddr().(*net.TCPAddr); ok {
		bound = ta.AddrPort()
	}
	if err := writeReply(c, ReplySucceeded, bound); err != nil {
		log.Debug("socks5 reply failed", "err", err)
		return
	}
	c.SetDeadline(time.Time{})
	log.Debug("socks5 connected")
	relay(c, up)
}

// negotiate runs method selection and RFC 1929 authentication.
func (s *Server) negotiate(c net.Conn) error {
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if hdr[0] != socksVersion {
		return fmt.Errorf("version %d", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, methods); err != nil {
		return fmt.Errorf("read methods: %w", err)
	}
	offered := false
	for _, m := range methods {
		if m == methodUserPass {
			offered = true
		}
	}
	if !offered {
		c.Write([]byte{socksVersion, methodNoAcceptable})
		return errors.New("client does not offer username/password authentication")
	}
	if _, err := c.Write([]byte{socksVersion, methodUserPass}); err != nil {
		return fmt.Errorf("write method: %w", err)
	}

	user, pass, err := readUserPass(c)
	if err != nil {
		c.Write([]byte{userPassVersion, 0x01})
		return err
	}
	us, ps := sha256.Sum256(user), sha256.Sum256(pass)
	ok := subtle.ConstantTimeCompare(us[:], s.userSum[:]) & subtle.ConstantTimeCompare(ps[:], s.passSum[:])
	if ok != 1 {
		c.Write([]byte{userPassVersion, 0x01})
		return errors.New("bad credentials")
	}
	if _, err := c.Write([]byte{userPassVersion, 0x00}); err != nil {
		return fmt.Errorf("write auth status: %w", err)
	}
	return nil
}

// relay copies between the client and the upstream in both directions.
// When one side finishes sending, the other side's write half is closed
// so that the EOF propagates; relay returns once both directions are done.
// An error in either direction tears both connections down.
func relay(client, up net.Conn) {
	done := make(chan struct{}, 1)
	pipe := func(dst, src net.Conn) {
		if _, err := io.Copy(dst, src); err != nil {
			client.Close()
			up.Close()
			return
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			if cw.CloseWrite() != nil {
				client.Close()
				up.Close()
			}
		}
	}
	go func() {
		pipe(up, client)
		done <- struct{}{}
	}()
	pipe(client, up)
	<-done
}
