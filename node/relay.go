package node

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/pkg/cork"
	"github.com/clustral/clustral/proto"
)

// Relay client defaults.
const (
	// relayQueue is how many datagrams may wait for the relay connection
	// before more are dropped.
	relayQueue = 1024
	// relayKeepAlive is how often a quiet relay connection carries a
	// keep-alive; relayIdle how long it may carry nothing from the
	// coordinator (which sends its own keep-alives) before it is dropped.
	relayKeepAlive = 15 * time.Second
	relayIdle      = 3 * relayKeepAlive
)

// RelayConfig configures the relay path of a node (RunRelay).
type RelayConfig struct {
	// BaseURL is the coordinator's base URL, e.g. "https://coord.example",
	// or several replicas' URLs, comma-separated (see coordclient.New).
	BaseURL string
	// Client carries the connection. Its *http.Transport, if it has one,
	// is copied and restricted to HTTP/1.1, which the upgrade needs. nil
	// means http.DefaultClient. Its Timeout must be zero.
	Client *http.Client
	// Token is the node token from registration.
	Token string
	// Logger receives the relay's logs; nil means slog.Default().
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the jittered exponential wait
	// between connection attempts. 0 means the map stream's defaults.
	MinBackoff, MaxBackoff time.Duration
	// OnConnect, if set, is called each time a relay connection is up,
	// on RunRelay's goroutine; it must not block.
	OnConnect func()
}

// RunRelay gives the node the coordinator's relay as a path to its peers:
// it holds a relay connection (proto.RelayPath) open until ctx is done,
// reconnecting with backoff, and returns ctx's error. It returns early
// only when the coordinator refuses the node token. While the connection is
// up, peers without a working direct path are reached through it. Run at
// most one RunRelay per node.
func (n *Node) RunRelay(ctx context.Context, cfg RelayConfig) error {
	c, err := newRelayClient(cfg, n.bind.deliverRelay)
	if err != nil {
		return err
	}
	n.bind.setRelay(c)
	defer n.bind.setRelay(nil)
	return c.run(ctx)
}

// relayClient is a node's relay connection, reconnected as needed. It is a
// relayLink.
type relayClient struct {
	cfg     RelayConfig
	client  *coordclient.Client
	log     *slog.Logger
	deliver func(src proto.Key, buf *[]byte, off, n int)

	isUp atomic.Bool
	out  chan *[]byte // whole frames in pooled buffers
}

func newRelayClient(cfg RelayConfig, deliver func(proto.Key, *[]byte, int, int)) (*relayClient, error) {
	if err := coordclient.CheckURLs(cfg.BaseURL); err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.MinBackoff, cfg.MaxBackoff = backoffBounds(cfg.MinBackoff, cfg.MaxBackoff)
	hc := cfg.Client
	if hc == nil {
		hc = http.DefaultClient
	}
	rt := hc.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	if tr, ok := rt.(*http.Transport); ok {
		// An upgrade is an HTTP/1.1 affair.
		tr = tr.Clone()
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetHTTP1(true)
		// A transport that has spoken HTTP/2 over TLS lists "h2" in its
		// ALPN protocols, and its clone would too: a TLS front end that
		// takes it would read the upgrade as a broken HTTP/2 preface.
		if tr.TLSClientConfig != nil {
			tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
		}
		// Each relay connection is dialled for its upgrade, so that the
		// dial can hand the connection's cork.Conn to connect.
		tr.DisableKeepAlives = true
		dial := tr.DialContext
		if dial == nil {
			dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
		}
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			cc := cork.New(c)
			if slot, ok := ctx.Value(corkSlot{}).(*atomic.Pointer[cork.Conn]); ok {
				slot.Store(cc)
			}
			return cc, nil
		}
		hcCopy := *hc
		hcCopy.Transport = tr
		hc = &hcCopy
	}
	return &relayClient{
		cfg:     cfg,
		client:  coordclient.New(cfg.BaseURL, cfg.Token, hc),
		log:     cfg.Logger,
		deliver: deliver,
		out:     make(chan *[]byte, relayQueue),
	}, nil
}

func (c *relayClient) up() bool { return c.isUp.Load() }

func (c *relayClient) send(dst proto.Key, pkt []byte) bool {
	if !c.isUp.Load() || len(pkt) > proto.MaxRelayDatagram {
		return false
	}
	buf := getPacketBuf(proto.RelayFrameHeaderLen + len(dst) + len(pkt))
	*buf = proto.AppendRelayPacket((*buf)[:0], dst, pkt)
	select {
	case c.out <- buf:
		return true
	default:
		putPacketBuf(buf)
		return false
	}
}

func (c *relayClient) run(ctx context.Context) error {
	b := coordclient.Backoff(c.cfg.MinBackoff, c.cfg.MaxBackoff)
	for {
		connected, err := c.connect(ctx)
		c.isUp.Store(false)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if coordclient.IsRefused(err) {
			return fmt.Errorf("relay: %w", err)
		}
		if connected {
			b = coordclient.Backoff(c.cfg.MinBackoff, c.cfg.MaxBackoff)
		}
		wait := b.Step()
		c.log.Warn("relay connection interrupted", "err", err, "retry_in", wait.Round(time.Millisecond))
		if err := coordclient.Sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// connect runs one relay connection until it fails. connected reports
// whether the upgrade succeeded.
func (c *relayClient) connect(ctx context.Context) (connected bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var slot atomic.Pointer[cork.Conn]
	rwc, err := c.client.DialRelay(context.WithValue(ctx, corkSlot{}, &slot))
	if err != nil {
		return false, fmt.Errorf("open relay connection: %w", err)
	}
	defer rwc.Close()
	// The connection under rwc's TLS, when the relay's transport dialled
	// it (an *http.Transport's); nil otherwise.
	cc := slot.Load()
	// Datagrams queued while the relay was down are stale.
	for len(c.out) > 0 {
		putPacketBuf(<-c.out)
	}
	c.isUp.Store(true)
	c.log.Info("relay connected", "url", c.client.BaseURL()+proto.RelayPath)
	if c.cfg.OnConnect != nil {
		c.cfg.OnConnect()
	}

	idle := time.AfterFunc(relayIdle, func() { rwc.Close() })
	defer idle.Stop()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer rwc.Close()
		c.write(ctx, bufio.NewWriterSize(rwc, 64<<10), cc)
	}()
	defer wg.Wait()
	defer cancel()

	br := bufio.NewReaderSize(rwc, 64<<10)
	frame := make([]byte, proto.RelayFrameHeaderLen+proto.MaxRelayPayload)
	for {
		typ, payload, err := proto.ReadRelayFrame(br, frame)
		if err != nil {
			if ctx.Err() != nil {
				return true, ctx.Err()
			}
			return true, fmt.Errorf("read relay connection: %w", err)
		}
		idle.Reset(relayIdle)
		if typ != proto.RelayFramePacket {
			continue
		}
		src, pkt, err := proto.ParseRelayPacket(payload)
		if err != nil {
			return true, err
		}
		if len(pkt) > proto.MaxRelayDatagram {
			continue // no peer sends one; the coordinator does not relay one
		}
		buf := getPacketBuf(len(pkt))
		copy(*buf, pkt)
		c.deliver(src, buf, 0, len(pkt))
	}
}

// write writes queued frames, and a keep-alive when quiet, until ctx is
// done or a write fails. Each flush corks cc, the connection under bw's
// TLS (nil: none), so that its records leave in one write.
func (c *relayClient) write(ctx context.Context, bw *bufio.Writer, cc *cork.Conn) {
	ka := time.NewTicker(relayKeepAlive)
	defer ka.Stop()
	for {
		var buf *[]byte
		select {
		case <-ctx.Done():
			return
		case <-ka.C:
			if _, err := bw.Write(proto.AppendRelayKeepAlive(nil)); err != nil {
				return
			}
		case buf = <-c.out:
			_, err := bw.Write(*buf)
			putPacketBuf(buf)
			if err != nil {
				return
			}
		}
	drain:
		for bw.Buffered() < 32<<10 {
			select {
			case buf = <-c.out:
				_, err := bw.Write(*buf)
				putPacketBuf(buf)
				if err != nil {
					return
				}
			default:
				break drain
			}
		}
		if err := cc.Flush(bw); err != nil {
			return
		}
	}
}

// corkSlot is the context key under which connect asks the relay
// transport's dial for the cork.Conn it dials, in an
// *atomic.Pointer[cork.Conn].
type corkSlot struct{}
