package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

// Defaults of StreamConfig.
const (
	// MaxMapLineBytes bounds one message (one line) of the map stream. An
	// agent's snapshot lists every device that may reach its cluster,
	// each with its user's identity and roles: 450 bytes to a few KiB a
	// device, so 10,000 devices take 4.5 to 20 MiB. The bound leaves room
	// for several times that while keeping what a node buffers finite.
	MaxMapLineBytes = 64 << 20
	// DefaultStreamIdleTimeout is how long a stream may carry nothing,
	// not even a keep-alive, before it is considered dead. The
	// coordinator sends keep-alives well within it.
	DefaultStreamIdleTimeout = 60 * time.Second
	// DefaultStreamMinBackoff and DefaultStreamMaxBackoff bound the wait
	// between connection attempts. While a node is disconnected it runs
	// on its last map, so a revocation made meanwhile reaches it only
	// when it reconnects: the cap bounds how long after the coordinator
	// comes back that takes (a revocation made as the coordinator turns
	// ready reaches every node within a second), however long the
	// outage. Waits are jittered over the upper half, so a mesh's nodes
	// spread their reconnections over [cap/2, cap] rather than arriving
	// at once; an attempt against a coordinator that is down costs a
	// refused connection.
	DefaultStreamMinBackoff = 100 * time.Millisecond
	DefaultStreamMaxBackoff = 800 * time.Millisecond
)

// ErrNoSnapshot is the error of a map stream whose first message is not a
// snapshot.
var ErrNoSnapshot = errors.New("map stream did not start with a snapshot")

// Applier applies map messages. *Node is one.
type Applier interface {
	Apply(proto.MapMessage) error
}

// StreamConfig configures a Stream.
type StreamConfig struct {
	// BaseURL is the coordinator's base URL, e.g. "https://coord.example",
	// or several replicas' URLs, comma-separated (see coordclient.New).
	BaseURL string
	// Client makes the requests; nil means http.DefaultClient. Its
	// Timeout must be zero: the stream is long-lived (IdleTimeout bounds
	// silence instead).
	Client *http.Client
	// Token is the node token from registration.
	Token string
	// Endpoints, if set, returns the endpoints to publish (query parameter
	// proto.MapEndpointsParam). It is called before every connection.
	Endpoints func() []netip.AddrPort
	// Synced, if set, is called on the stream's goroutine each time a
	// connection's snapshot has been applied, with the endpoints that
	// connection published when it opened. The coordinator has recorded
	// them by then, possibly over a newer list published meanwhile by
	// other means, which Synced can publish again. It must not block.
	Synced func(published []netip.AddrPort)
	// Logger receives the stream's logs; nil means slog.Default().
	Logger *slog.Logger
	// IdleTimeout: a connection that carries nothing for this long is
	// dropped and reopened. 0 means DefaultStreamIdleTimeout.
	IdleTimeout time.Duration
	// MinBackoff and MaxBackoff bound the jittered exponential wait
	// between connection attempts. 0 means the defaults.
	MinBackoff, MaxBackoff time.Duration
	// MaxLineBytes bounds one message. 0 means MaxMapLineBytes.
	MaxLineBytes int
}

// StreamStatus is the state of a Stream.
type StreamStatus struct {
	// Connected is true while a connection is open and its snapshot has
	// been applied.
	Connected bool
	// Since is when the current connection's snapshot was applied.
	Since time.Time
	// Version is the last map version applied from the stream.
	Version uint64
	// Connects counts the connections whose snapshot was applied.
	Connects int
	// LastError is the error that ended the last connection or attempt,
	// nil if none yet; LastErrorAt is when it happened.
	LastError   error
	LastErrorAt time.Time
}

// Stream keeps a node in step with the coordinator: it holds the map
// stream (GET /api/v1/map, newline-delimited JSON proto.MapMessage values)
// open, applies every message, and reconnects with a jittered, capped
// exponential backoff when the connection fails, a message is malformed or
// too long, or a delta does not follow (the new connection starts with a
// snapshot, which resyncs the node).
//
// A message that fails is never partially applied: the node's state is as
// before it.
type Stream struct {
	cfg     StreamConfig
	applier Applier
	logger  *slog.Logger
	client  *coordclient.Client

	mu     sync.Mutex
	status StreamStatus
}

// backoffBounds returns the bounds of a reconnect loop's backoff:
// DefaultStreamMinBackoff and DefaultStreamMaxBackoff where minB or maxB
// is not positive, and maxB no lower than minB.
func backoffBounds(minB, maxB time.Duration) (time.Duration, time.Duration) {
	if minB <= 0 {
		minB = DefaultStreamMinBackoff
	}
	if maxB <= 0 {
		maxB = DefaultStreamMaxBackoff
	}
	return minB, max(maxB, minB)
}

// NewStream returns a Stream feeding a. Call Run to start it.
func NewStream(a Applier, cfg StreamConfig) (*Stream, error) {
	if err := coordclient.CheckURLs(cfg.BaseURL); err != nil {
		return nil, fmt.Errorf("map stream: %w", err)
	}
	if cfg.Client == nil {
		cfg.Client = http.DefaultClient
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultStreamIdleTimeout
	}
	cfg.MinBackoff, cfg.MaxBackoff = backoffBounds(cfg.MinBackoff, cfg.MaxBackoff)
	if cfg.MaxLineBytes <= 0 {
		cfg.MaxLineBytes = MaxMapLineBytes
	}
	return &Stream{cfg: cfg, applier: a, logger: cfg.Logger, client: coordclient.New(cfg.BaseURL, cfg.Token, cfg.Client)}, nil
}

// Status returns the stream's state.
func (s *Stream) Status() StreamStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Run holds the stream open until ctx is done, and returns ctx's error. It
// returns early only when the coordinator refuses the node token (401 or
// 403): the error wraps the *proto.Problem, and retrying cannot help.
func (s *Stream) Run(ctx context.Context) error {
	b := coordclient.Backoff(s.cfg.MinBackoff, s.cfg.MaxBackoff)
	for {
		synced, err := s.connect(ctx)
		if synced {
			b = coordclient.Backoff(s.cfg.MinBackoff, s.cfg.MaxBackoff)
		}
		if ctx.Err() != nil {
			s.setDisconnected(nil)
			return ctx.Err()
		}
		s.setDisconnected(err)
		if coordclient.IsRefused(err) {
			return fmt.Errorf("map stream: %w", err)
		}
		wait := b.Step()
		s.logger.Warn("map stream interrupted", "err", err, "retry_in", wait.Round(time.Millisecond))
		if err := coordclient.Sleep(ctx, wait); err != nil {
			return err
		}
	}
}

func (s *Stream) setDisconnected(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.Connected = false
	if err != nil {
		s.status.LastError = err
		s.status.LastErrorAt = time.Now()
	}
}

// connect runs one connection until it fails. synced reports whether its
// snapshot was applied.
func (s *Stream) connect(ctx context.Context) (synced bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	var eps []netip.AddrPort
	if s.cfg.Endpoints != nil {
		eps = s.cfg.Endpoints()
	}

	errIdle := fmt.Errorf("map stream idle for %v", s.cfg.IdleTimeout)
	idle := time.AfterFunc(s.cfg.IdleTimeout, func() { cancel(errIdle) })
	defer idle.Stop()

	body, err := s.client.MapStream(ctx, eps)
	if err != nil {
		if cause := context.Cause(ctx); cause == errIdle {
			return false, cause
		}
		return false, fmt.Errorf("open map stream: %w", err)
	}
	defer body.Close()

	sc := bufio.NewScanner(body)
	// The scanner's limit is the larger of its buffer's capacity and max.
	sc.Buffer(make([]byte, 0, min(64<<10, s.cfg.MaxLineBytes)), s.cfg.MaxLineBytes)
	for sc.Scan() {
		idle.Reset(s.cfg.IdleTimeout)
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var msg proto.MapMessage
		if err := json.Unmarshal(line, &msg); err != nil {
			return synced, fmt.Errorf("%w: malformed line: %v", ErrInvalidMessage, err)
		}
		if msg.KeepAlive {
			continue
		}
		if !synced && !msg.Snapshot {
			return false, fmt.Errorf("%w (got delta version %d)", ErrNoSnapshot, msg.Version)
		}
		if err := s.applier.Apply(msg); err != nil {
			return synced, fmt.Errorf("apply map version %d: %w", msg.Version, err)
		}
		s.mu.Lock()
		if msg.Snapshot && !synced {
			s.status.Connected = true
			s.status.Since = time.Now()
			s.status.Connects++
		}
		s.status.Version = msg.Version
		s.mu.Unlock()
		if !synced {
			s.logger.Info("map stream synced", "version", msg.Version, "peers", len(msg.Peers))
			if s.cfg.Synced != nil {
				s.cfg.Synced(eps)
			}
		}
		synced = true
	}
	err = sc.Err()
	switch {
	case errors.Is(err, bufio.ErrTooLong):
		return synced, fmt.Errorf("%w: message longer than %d bytes", ErrInvalidMessage, s.cfg.MaxLineBytes)
	case context.Cause(ctx) == errIdle:
		return synced, errIdle
	case err != nil:
		return synced, fmt.Errorf("read map stream: %w", err)
	}
	return synced, errors.New("map stream closed by the coordinator")
}
