// Package agent is the in-cluster side of clustral. Run is the whole
// agent process: it registers with the coordinator, joins the mesh and
// serves Proxy, the identity-aware Kubernetes proxy, on its overlay
// addresses.
//
// The proxy knows who is calling only from the connection: the overlay
// source address of the connection names a WireGuard peer, and the peer's
// identity in the current network map says who the user is and which roles
// apply on this cluster. Nothing in the request can change that. Requests
// are forwarded to the kube-apiserver with the agent's own credentials and
// Impersonate-User / Impersonate-Group headers; the apiserver's RBAC judges
// the impersonated identity.
//
// Before that, the proxy enforces what clustral itself knows: the
// restrictions and time windows of each role grant (a request goes out with
// the groups of the grants that allow it, or is refused with a reason), and
// a per-user rate limit.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/time/rate"
	"k8s.io/client-go/rest"

	"github.com/clustral/clustral/agent/live"
	"github.com/clustral/clustral/agent/recording"
	"github.com/clustral/clustral/proto"
)

// Peers resolves the overlay source address of a connection to the peer
// that owns it in the current network map, with the peer's identity.
//
// Implementations must be safe for concurrent use and should answer in
// O(1): the proxy calls PeerByAddr once per request, and once per live
// request on every sweep. The returned Peer, including what it points to,
// must not be modified afterwards; a map change replaces a peer, never
// edits it in place.
type Peers interface {
	PeerByAddr(addr netip.Addr) (proto.Peer, bool)
}

// DefaultSweepInterval is how often a Proxy re-evaluates its live
// requests on its own clock, so that expiry and unannounced map changes
// take effect within a second.
const DefaultSweepInterval = 500 * time.Millisecond

// ProxyConfig configures a Proxy.
type ProxyConfig struct {
	// Cluster is the name of the cluster, used in messages to the user.
	Cluster string
	// Upstream reaches the kube-apiserver with the agent's own
	// credentials (in-cluster config, or a kubeconfig). Its Impersonate
	// settings are ignored, and a custom Transport is not supported.
	Upstream *rest.Config
	// Peers is the identity source.
	Peers Peers
	// Now is the clock that decides expiry; nil means time.Now.
	Now func() time.Time
	// Logger receives one line per request; nil means slog.Default().
	Logger *slog.Logger
	// SweepInterval is how often live requests are re-evaluated on the
	// proxy's own clock; zero means DefaultSweepInterval.
	SweepInterval time.Duration
	// RateLimit is the sustained number of requests per second each user
	// (login) may start; zero means DefaultRateLimit, a negative value
	// turns per-user limiting off. A watch, log stream or upgraded
	// connection counts once, when it starts.
	RateLimit rate.Limit
	// RateBurst is how many requests a user may start at once above
	// RateLimit; zero means DefaultRateBurst, a negative value turns
	// per-user limiting off.
	RateBurst int
	// Audit, if set, receives one audit event per request (two for an
	// upgraded stream: its start and its end). It is called on the
	// request's goroutine and must not block for long: hand the event to
	// a spool.
	Audit func(proto.AuditEvent)
	// Metrics receives the proxy's Prometheus series (clustral_proxy_*),
	// labelled with the cluster. Nil keeps them in a registry of the proxy's own.
	Metrics prometheus.Registerer
	// Recorder records the exec and attach sessions whose roles ask for
	// it (see record.go). Nil records none: a session whose role
	// requires a recording is then refused.
	Recorder *recording.Recorder
	// Live, if set, is served as the live cluster view under
	// proto.LivePrefix (see liveview.go); nil answers those paths with
	// 404. Reevaluate has its streams check their access again.
	Live *live.Source

	// timeouts replaces the fields of defaultServerTimeouts that it sets;
	// tests shorten them.
	timeouts serverTimeouts
}

// Proxy is the identity-aware Kubernetes proxy. It is an http.Handler and
// safe for concurrent use.
//
// Every request is authorized on its own from the current map. Requests
// in flight (watches, logs -f, upgraded exec/attach/port-forward streams)
// are tracked by peer key and closed when the map no longer allows them:
// on Reevaluate, on ClosePeer, and on a sweep every SweepInterval that
// catches expiry by the proxy's clock. A live request whose impersonated
// identity would now differ (a role change) is closed too, so it cannot
// go on with stale rights; the client reconnects with the new ones.
//
// Served through Serve or ServeTLS, the proxy also tracks connections: a
// connection is pinned to the peer of its first request, and closing a
// request closes its connection, which also breaks a write blocked on a
// client that stopped reading. Used as a plain handler under another
// server, requests are still cancelled, but idle connections are that
// server's business.
//
// Close stops the sweep and closes every server, connection and request.
type Proxy struct {
	cluster string
	peers   Peers
	now     func() time.Time
	log     *slog.Logger

	rp        *httputil.ReverseProxy // HTTP/2 or HTTP/1.1 upstream
	rpUpgrade *httputil.ReverseProxy // HTTP/1.1 only, no keep-alive
	rpWatch   *httputil.ReverseProxy // rp with small copy buffers, for watches
	upgradeTr *http.Transport

	// gen advances on every Reevaluate and ClosePeer, so a request that
	// was authorized before one can tell that it must check again.
	gen atomic.Uint64

	limits  *limiters // nil if off
	metrics *metrics

	audit    func(proto.AuditEvent) // nil if off
	recorder *recording.Recorder    // nil if none
	view     *live.Source           // nil if off

	sweepEvery time.Duration
	stop       chan struct{}
	sweepDone  chan struct{}

	mu      sync.Mutex
	closed  bool
	live    map[proto.Key]*peerLive
	liveCh  chan struct{} // LiveChanged
	conns   map[*trackedConn]struct{}
	servers map[*http.Server]struct{}

	timeouts serverTimeouts // of the servers of Serve and ServeTLS
}

// NewProxy returns a Proxy forwarding to c.Upstream and starts its expiry
// sweep. The caller must Close it.
func NewProxy(c ProxyConfig) (*Proxy, error) {
	if c.Upstream == nil {
		return nil, errors.New("new proxy: no upstream config")
	}
	if c.Peers == nil {
		return nil, errors.New("new proxy: no peers")
	}
	if c.Cluster == "" {
		return nil, errors.New("new proxy: no cluster name")
	}
	target, mainTr, upgradeTr, err := upstream(c.Upstream)
	if err != nil {
		return nil, fmt.Errorf("new proxy for cluster %s: %w", c.Cluster, err)
	}
	p := &Proxy{
		cluster:    c.Cluster,
		peers:      c.Peers,
		now:        c.Now,
		log:        c.Logger,
		sweepEvery: c.SweepInterval,
		audit:      c.Audit,
		recorder:   c.Recorder,
		view:       c.Live,
		limits:     newLimiters(c.RateLimit, c.RateBurst),
		metrics:    newMetrics(c.Cluster),
		stop:       make(chan struct{}),
		sweepDone:  make(chan struct{}),
		live:       make(map[proto.Key]*peerLive),
		liveCh:     make(chan struct{}, 1),
		conns:      make(map[*trackedConn]struct{}),
		servers:    make(map[*http.Server]struct{}),
		timeouts:   c.timeouts.orDefaults(),
	}
	if p.now == nil {
		p.now = time.Now
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.sweepEvery <= 0 {
		p.sweepEvery = DefaultSweepInterval
	}
	reg := c.Metrics
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if err := p.metrics.register(reg); err != nil {
		return nil, fmt.Errorf("new proxy for cluster %s: metrics: %w", c.Cluster, err)
	}
	errLog := slog.NewLogLogger(p.log.Handler(), slog.LevelDebug)
	rewrite := func(pr *httputil.ProxyRequest) { rewriteRequest(pr, target) }
	// A response of known length is written when the handler ends: its
	// body and the end of the stream leave in one write through the mesh
	// (the HTTP/2 server still flushes the headers before it). ReverseProxy
	// flushes each write of a streamed one (no length, as logs -f) by
	// itself. Watches flush each event.
	p.rp = &httputil.ReverseProxy{
		Rewrite:        rewrite,
		Transport:      mainTr,
		BufferPool:     copyBuffers,
		ErrorLog:       errLog,
		ErrorHandler:   p.proxyError,
		ModifyResponse: modifyResponse,
	}
	rpWatch := *p.rp
	rpWatch.BufferPool = watchBuffers
	rpWatch.FlushInterval = -1
	p.rpWatch = &rpWatch
	p.upgradeTr = upgradeTr.base
	p.rpUpgrade = &httputil.ReverseProxy{
		Rewrite:       rewrite,
		Transport:     upgradeTr.rt,
		FlushInterval: -1,
		BufferPool:    copyBuffers,
		ErrorLog:      errLog,
		ErrorHandler:  p.proxyError,
		ModifyResponse: func(res *http.Response) error {
			if err := p.beginRecording(res); err != nil {
				return err
			}
			err := modifyUpgradeResponse(res)
			p.streamStarted(res)
			return err
		},
	}
	go p.sweep()
	return p, nil
}

type upgradeTransport struct {
	base *http.Transport
	rt   http.RoundTripper
}

// upstream builds the apiserver URL and two transports from cfg: the
// client-go transport for ordinary requests (which may speak HTTP/2), and
// an HTTP/1.1-only transport without keep-alive for upgrades, since an
// HTTP/2 connection cannot switch protocols. Both authenticate with cfg's
// credentials through client-go's wrappers, and neither changes the
// content coding the client asked for.
func upstream(cfg *rest.Config) (*url.URL, http.RoundTripper, upgradeTransport, error) {
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{}
	// Content coding is the client's choice: the transport must not ask
	// for gzip on a client's behalf and expand the answer again, which
	// costs the apiserver and the agent a compression each way on every
	// large answer to a client that asked for none.
	c.DisableCompression = true
	if c.Transport != nil {
		return nil, nil, upgradeTransport{}, errors.New("upstream config with a custom Transport is not supported")
	}
	target, _, err := rest.DefaultServerUrlFor(c)
	if err != nil {
		return nil, nil, upgradeTransport{}, fmt.Errorf("upstream URL: %w", err)
	}
	mainTr, err := rest.TransportFor(c)
	if err != nil {
		return nil, nil, upgradeTransport{}, fmt.Errorf("upstream transport: %w", err)
	}
	tlsConf, err := rest.TLSConfigFor(c)
	if err != nil {
		return nil, nil, upgradeTransport{}, fmt.Errorf("upstream TLS config: %w", err)
	}
	if tlsConf != nil {
		tlsConf.NextProtos = []string{"http/1.1"}
	}
	dial := (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	if c.Dial != nil {
		dial = c.Dial
	}
	proxy := http.ProxyFromEnvironment
	if c.Proxy != nil {
		proxy = c.Proxy
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	base := &http.Transport{
		Proxy:               proxy,
		DialContext:         dial,
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: 10 * time.Second,
		DisableCompression:  true,
		// An upgrade consumes its connection; one refused with another
		// status is not reused either.
		DisableKeepAlives: true,
		Protocols:         &protos,
	}
	rt, err := rest.HTTPWrappersForConfig(c, base)
	if err != nil {
		return nil, nil, upgradeTransport{}, fmt.Errorf("upstream upgrade transport: %w", err)
	}
	return target, mainTr, upgradeTransport{base: base, rt: rt}, nil
}

// allowedUpgrades are the protocols kubectl exec, attach and port-forward
// use.
var allowedUpgrades = []string{"SPDY/3.1", "websocket"}

// upgradeOf returns the requested upgrade protocol, whether the request
// asks for one, and whether it is allowed.
func upgradeOf(h http.Header) (protocol string, upgrade, ok bool) {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return "", false, false
	}
	v := h.Values("Upgrade")
	if len(v) != 1 {
		return strings.Join(v, ", "), true, false
	}
	for _, a := range allowedUpgrades {
		if strings.EqualFold(strings.TrimSpace(v[0]), a) {
			return v[0], true, true
		}
	}
	return v[0], true, false
}

// ServeHTTP authorizes r from its connection's peer and forwards it.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w, corr: newCorrelation(), trace: requestTrace(r.Header)}
	w.Header().Set(proto.HeaderRequestID, sw.corr)
	info := parseRequestInfo(r)
	var (
		peer    proto.Peer
		imp     impersonation
		code    proto.ErrorCode
		s       *stream
		aborted bool
	)
	defer func() {
		v := recover()
		aborted = v != nil
		p.endRecording(s)
		p.logRequest(r, info, start, sw, peer, imp, code, s, aborted)
		p.auditRequest(r, info, start, sw, peer, imp, code, s)
		p.metrics.done(info.Verb, responseStatus(sw, s), code, time.Since(start))
		if v != nil {
			panic(v)
		}
	}()

	up, isUpgrade, upgradeOK := upgradeOf(r.Header)
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	limited := false // a token was taken, or none was needed
	for {
		// Decide, then track the request so revocations find it. A
		// Reevaluate or ClosePeer that ran in between may not have seen it:
		// then decide again.
		gen := p.gen.Load()
		addr, pr, d := p.identify(r)
		peer = pr
		if d == nil && !limited {
			limited = true
			d = p.limit(peer)
		}
		if d == nil {
			imp, d = authorize(p.cluster, peer, info, p.now())
		}
		if d == nil && isUpgrade && !upgradeOK {
			d = deny(http.StatusBadRequest, proto.CodeBadUpgrade,
				"Upgrade to %q is not supported by the clustral proxy of cluster '%s'; only SPDY/3.1 and websocket are (kubectl exec, attach, port-forward).",
				up, p.cluster)
		}
		if d == nil && isUpgrade && !upgradable(info) {
			d = deny(http.StatusBadRequest, proto.CodeBadUpgrade,
				"The clustral proxy of cluster '%s' refuses an upgrade (%s) on %s %s: it accepts upgrades only for exec, attach, port-forward and the proxy subresources (pods/exec, pods/attach, pods/portforward, pods/proxy, services/proxy, nodes/proxy) with GET or POST. Send this request without Upgrade.",
				p.cluster, up, r.Method, r.URL.Path)
		}
		if d == nil {
			s = &stream{key: peer.Key, addr: addr, imp: imp, info: info, ctx: ctx, cancel: cancel, conn: connFrom(r.Context()),
				login: loginOf(peer), corr: sw.corr, trace: sw.trace, h2: r.ProtoMajor == 2,
				live: liveOf(info, r, peer.Key, loginOf(peer), sw.corr, start)}
			d = p.track(s)
		}
		if d != nil {
			s = nil
			code = d.code
			writeDenial(sw, d)
			return
		}
		if p.gen.Load() == gen {
			break
		}
		p.untrack(s)
	}
	defer p.untrack(s)
	if isUpgrade {
		if d := p.startRecording(s, r); d != nil {
			code = d.code
			writeDenial(sw, d)
			return
		}
	}

	if isLive(r) {
		p.serveLive(sw, r.WithContext(ctx), s)
		return
	}
	rp := p.rp
	switch {
	case isUpgrade:
		rp = p.rpUpgrade
	case info.Verb == "watch":
		rp = p.rpWatch
	}
	ctx = withClientBody(context.WithValue(ctx, streamKey{}, s), r)
	rp.ServeHTTP(sw, r.WithContext(ctx))
}

// limit takes a token from the bucket of peer's user. A request counts
// once, however long it lives.
func (p *Proxy) limit(peer proto.Peer) *denial {
	if p.limits == nil || peer.Identity == nil || peer.Identity.Login == "" {
		return nil // no user to count; authorize refuses it
	}
	wait, ok := p.limits.take(peer.Identity.Login, p.now())
	if ok {
		return nil
	}
	return p.rateLimited(peer.Identity.Login, wait)
}

// identify resolves the caller of r. A connection served by Serve is
// pinned to the peer of its first request; a later request on it from
// another peer is refused, and the connection closed.
func (p *Proxy) identify(r *http.Request) (netip.Addr, proto.Peer, *denial) {
	unknown := func() *denial {
		return deny(http.StatusForbidden, proto.CodeUnknownPeer,
			"This connection does not come from a device that cluster '%s' knows. Run: clustral up, and try again.", p.cluster)
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, proto.Peer{}, unknown()
	}
	addr := ap.Addr().Unmap()
	peer, ok := p.peers.PeerByAddr(addr)
	if !ok {
		return addr, proto.Peer{}, unknown()
	}
	if c := connFrom(r.Context()); c != nil && !p.pin(c, peer.Key) {
		d := deny(http.StatusForbidden, proto.CodeUnknownPeer,
			"This connection was opened by another device than the one now using its address. Reconnect and try again.")
		d.closeConn = true
		return addr, proto.Peer{}, d
	}
	return addr, peer, nil
}

// streamKey carries the *stream of a request to the Rewrite and
// ModifyResponse hooks.
type streamKey struct{}

func streamFrom(ctx context.Context) *stream {
	s, _ := ctx.Value(streamKey{}).(*stream)
	return s
}

// rewriteRequest builds the upstream request. ReverseProxy has already
// removed hop-by-hop headers, those named in Connection, and Forwarded /
// X-Forwarded-{For,Host,Proto}. The trace context headers are the
// request's trace (see requestTrace), re-encoded.
func rewriteRequest(pr *httputil.ProxyRequest, target *url.URL) {
	s := streamFrom(pr.In.Context())
	pr.SetURL(target)
	if pr.In.ProtoMajor == 2 && pr.Out.Body != nil {
		// ReverseProxy hands the transport a body whose Close does
		// nothing, so that closing never waits on an HTTP/1.1 client (such
		// a body drains on Close). But an apiserver that answers before
		// reading the body, as it does when RBAC refuses a create, makes
		// the HTTP/2 transport stop sending the body and close it, while
		// the client, seeing the refusal, stops sending too. With Close
		// ignored, the transport's body writer would wait for bytes that
		// never come and closing the response would wait for the writer:
		// the response would never end. An HTTP/2 server body closes
		// without blocking and ends a pending Read at once.
		pr.Out.Body = pr.In.Body
	}
	h := pr.Out.Header
	for k := range h {
		if dropHeader(k) {
			delete(h, k)
		}
	}
	// The overlay source address is the only client address there is, and
	// the client cannot choose it. Host and proto are not forwarded.
	h.Set("X-Forwarded-For", s.addr.String())
	if s.rec != nil {
		// A recorded session's frames must stay readable: no WebSocket
		// extension (compression sets RSV1 and deflates the payload).
		// The Kubernetes clients ask for none anyway.
		delete(h, "Sec-Websocket-Extensions")
	}
	h["Impersonate-User"] = []string{s.imp.user}
	h["Impersonate-Group"] = slices.Clip(s.imp.groups)
	// The apiserver takes Audit-ID as its audit event's id and its
	// span's audit-id: it is the request's correlation id, so that the
	// apiserver's audit log and clustral's name a request alike, and a
	// client cannot choose (or reuse) the id the apiserver records.
	h.Set(auditIDHeader, s.corr)
	setTrace(h, s.trace)
}

// auditIDHeader is the header kube-apiserver reads its audit id from.
const auditIDHeader = "Audit-Id"

// dropHeader reports whether a client header (in canonical form) must not
// reach the apiserver: credentials, impersonation, forwarding claims and
// the front-proxy identity headers.
func dropHeader(k string) bool {
	switch k {
	case "Authorization", "Forwarded", "X-Real-Ip":
		return true
	}
	return hasPrefixFold(k, "Impersonate-") ||
		hasPrefixFold(k, "X-Forwarded-") ||
		hasPrefixFold(k, "X-Remote-")
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

func modifyResponse(res *http.Response) error {
	if s := streamFrom(res.Request.Context()); s != nil {
		s.responded.Store(true)
	}
	return nil
}

// modifyUpgradeResponse passes a refused upgrade to the client and closes
// the client connection after it.
func modifyUpgradeResponse(res *http.Response) error {
	modifyResponse(res)
	if res.StatusCode == http.StatusSwitchingProtocols {
		if s := streamFrom(res.Request.Context()); s != nil {
			s.upgraded.Store(true)
		}
		return nil
	}
	res.Header.Set("Connection", "close")
	return nil
}

// proxyError answers a request that could not be forwarded.
func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	ctx := r.Context()
	var d *denial
	if errors.As(context.Cause(ctx), &d) {
		writeDenial(w, d)
		return
	}
	// The client's body failed before the apiserver did: on HTTP/1.1
	// that also cancels ctx, so it is checked first.
	if berr := clientBodyErr(ctx); errors.Is(berr, os.ErrDeadlineExceeded) {
		writeError(w, http.StatusRequestTimeout, proto.CodeRequestTimeout, fmt.Sprintf(
			"The request body did not reach the clustral proxy of cluster '%s' within %v of the request's start, so the request was not sent on. Check the connection (clustral status) and try again.",
			p.cluster, p.timeouts.read))
		return
	} else if berr != nil {
		writeError(w, http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf(
			"The clustral proxy of cluster '%s' could not read the request body (%v), so the request was not sent on. Try again.",
			p.cluster, berr))
		return
	}
	if ctx.Err() != nil {
		return // the client went away
	}
	attrs := []slog.Attr{slog.String("cluster", p.cluster), slog.String("path", r.URL.Path), slog.Any("err", err)}
	if s := streamFrom(ctx); s != nil {
		attrs = appendRequestIDs(attrs, s.corr, s.trace)
	}
	p.log.LogAttrs(ctx, slog.LevelWarn, "upstream request failed", attrs...)
	writeError(w, http.StatusBadGateway, proto.CodeUpstreamUnavailable, fmt.Sprintf(
		"The agent of cluster '%s' cannot reach the Kubernetes API server. Check that the API server is up and look at the agent's logs; then try again.",
		p.cluster))
}

func writeDenial(w http.ResponseWriter, d *denial) {
	if d.closeConn {
		w.Header().Set("Connection", "close")
	}
	if d.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(d.retryAfter))
	}
	writeError(w, d.status, d.code, d.msg)
}

// writeError answers with a plain text sentence, which kubectl shows
// verbatim, and the machine-readable code in its header.
func writeError(w http.ResponseWriter, status int, code proto.ErrorCode, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(proto.HeaderErrorCode, string(code))
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n")
}

func (p *Proxy) logRequest(r *http.Request, info requestInfo, start time.Time, sw *statusWriter, peer proto.Peer, imp impersonation, code proto.ErrorCode, s *stream, aborted bool) {
	status := responseStatus(sw, s)
	attrs := make([]slog.Attr, 0, 16) // all there may be: one allocation
	attrs = append(attrs,
		slog.String("cluster", p.cluster),
		slog.String("remote", r.RemoteAddr),
		slog.String("verb", info.Verb),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		slog.Duration("duration", time.Since(start)),
	)
	attrs = appendRequestIDs(attrs, sw.corr, sw.trace)
	if !peer.Key.IsZero() {
		attrs = append(attrs, slog.String("peer", peer.Key.ShortString()))
	}
	if peer.Identity != nil {
		attrs = append(attrs, slog.String("user", peer.Identity.Login))
	}
	if imp.user != "" && (peer.Identity == nil || imp.user != peer.Identity.Login) {
		attrs = append(attrs, slog.String("kube_user", imp.user))
	}
	if info.Resource != "" {
		attrs = append(attrs, slog.String("resource", info.Resource))
	}
	if info.Namespace != "" {
		attrs = append(attrs, slog.String("namespace", info.Namespace))
	}
	if code != "" {
		attrs = append(attrs, slog.String("code", string(code)))
	}
	if s != nil {
		var d *denial
		if errors.As(context.Cause(s.ctx), &d) {
			attrs = append(attrs, slog.String("closed", string(d.code)))
		}
	}
	if aborted {
		attrs = append(attrs, slog.Bool("aborted", true))
	}
	p.log.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
}

// appendRequestIDs appends the log attributes that name a request: its
// correlation id, and its trace id and the proxy's span id (see
// requestTrace).
func appendRequestIDs(attrs []slog.Attr, corr string, sc trace.SpanContext) []slog.Attr {
	return append(attrs,
		slog.String("correlation", corr),
		slog.String("trace_id", sc.TraceID().String()),
		slog.String("span_id", sc.SpanID().String()),
	)
}

// responseStatus is the status a request was answered with: 101 for an
// upgraded stream, 0 if nothing was written.
func responseStatus(sw *statusWriter, s *stream) int {
	if s != nil && s.upgraded.Load() {
		return http.StatusSwitchingProtocols
	}
	return sw.status
}

// statusWriter records the status of a response. Unwrap lets
// http.ResponseController reach Flush and Hijack.
type statusWriter struct {
	http.ResponseWriter
	status int
	n      int64             // body bytes written
	corr   string            // the request's correlation id
	trace  trace.SpanContext // the request's trace, as sent upstream
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// bufferPool recycles ReverseProxy's copy buffers of one size.
type bufferPool struct{ pool *sync.Pool }

func newBufferPool(size int) bufferPool {
	return bufferPool{&sync.Pool{New: func() any { b := make([]byte, size); return &b }}}
}

func (p bufferPool) Get() []byte  { return *p.pool.Get().(*[]byte) }
func (p bufferPool) Put(b []byte) { p.pool.Put(&b) }

// The copy buffers: 32 KiB for answers in general (a large list moves in
// few writes), 4 KiB for watches. A watch holds its buffer for as long as
// it lives, mostly idle, and its events are small: a thousand watches
// held 32 MiB of buffers (BenchmarkIdleWatches' heap profile).
var (
	copyBuffers  = newBufferPool(32 << 10)
	watchBuffers = newBufferPool(4 << 10)
)
