package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/clustral/clustral/agent/live"
	"github.com/clustral/clustral/agent/recording"
	"github.com/clustral/clustral/agent/spool"
	"github.com/clustral/clustral/node"
	"github.com/clustral/clustral/node/mesh"
	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/pkg/version"
	"github.com/clustral/clustral/proto"
)

// Defaults of Config.
const (
	// DefaultHealthListen is the address of the health and metrics
	// endpoints when Config.HealthListen is empty.
	DefaultHealthListen = ":8080"
	// DefaultDrainTimeout is the drain time `clustral agent` gives open
	// requests on SIGTERM.
	DefaultDrainTimeout = 20 * time.Second
)

// Registration is retried while the coordinator cannot be reached: it
// may not be up yet when the agent's pod starts.
const (
	registerRetries = 30
	registerRetry   = time.Second
)

// Config configures an agent process (Run). CoordinatorURL, JoinToken,
// Upstream and AuditDir are required; the zero value of every other field
// means its default.
type Config struct {
	// CoordinatorURL is the coordinator's base URL, e.g.
	// "https://clustral.example.com", or several replicas' URLs,
	// comma-separated (the agent moves to the next when one fails).
	// Whether a plain http:// URL is acceptable is the caller's decision.
	CoordinatorURL string
	// JoinToken is the cluster's join token (`clustral clusters add`
	// prints one). It is sent once, to register.
	JoinToken string
	// HTTPClient makes every request to the coordinator; nil means
	// http.DefaultClient. Its Timeout must be zero: the map stream and
	// the relay are long-lived.
	HTTPClient *http.Client
	// Hostname is the name the agent registers under, shown with the
	// cluster's agents; empty means the machine's host name (os.Hostname)
	// cut to the characters and length the coordinator accepts.
	Hostname string

	// Upstream reaches the kube-apiserver with the agent's own
	// credentials: in-cluster config, or a kubeconfig (see
	// ProxyConfig.Upstream).
	Upstream *rest.Config
	// RateLimit and RateBurst are the proxy's per-user limits, as in
	// ProxyConfig: zero means DefaultRateLimit and DefaultRateBurst, a
	// negative value turns the limit off.
	RateLimit rate.Limit
	RateBurst int

	// WireGuardPort is the UDP port of WireGuard; zero picks a free one.
	WireGuardPort int

	// HealthListen is the TCP address of /healthz, /readyz and /metrics
	// (Prometheus); empty means DefaultHealthListen. /readyz answers 200
	// from the first network map on until the agent starts draining.
	HealthListen string
	// HealthListener, if set, serves those endpoints instead of a
	// listener on HealthListen. Run closes it.
	HealthListener net.Listener

	// DrainTimeout is how long open requests, watches and streams
	// included, may finish once ctx is done; zero or less closes them at
	// once.
	DrainTimeout time.Duration

	// AuditDir is the directory of the audit spool, one per agent,
	// locked while Run runs. Keep it across restarts: events the
	// coordinator has not acknowledged wait there.
	AuditDir string
	// AuditMaxEvents bounds the spool while the coordinator is
	// unreachable; zero or less means spool.DefaultMaxEvents. When it is
	// full, new events are dropped with a warning and counted.
	AuditMaxEvents int

	// RecordingDir is where exec and attach sessions whose roles ask for
	// it are recorded (agent/recording); empty means the "recordings"
	// directory in AuditDir.
	RecordingDir string
	// RecordingMaxBytes caps each recording; zero means
	// recording.DefaultMaxBytes.
	RecordingMaxBytes int64

	// Live turns on the live cluster view (agent/live): shared informers
	// of LiveKinds, run as LiveUser, served to viewers on the overlay
	// under proto.LivePrefix.
	Live bool
	// LiveKinds are the kinds the live view follows (live.ParseKinds);
	// empty means live.DefaultKinds, which leave out secrets.
	LiveKinds []string
	// LiveUser is the Kubernetes user the agent impersonates to list and
	// watch those kinds and to create SubjectAccessReviews; empty means
	// DefaultLiveUser. The cluster's admin grants it that, and nothing
	// else; the agent's own service account keeps only impersonate.
	LiveUser string

	// Logger receives the agent's logs; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultLiveUser is the identity of the live view's informers. Logins
// under system: are refused by the proxy, so no user can be it.
const DefaultLiveUser = "system:clustral:live-view"

// validate says what is wrong with c, and how to fix it.
func (c *Config) validate() error {
	var errs []error
	if c.CoordinatorURL == "" {
		errs = append(errs, errors.New("no coordinator URL: set Config.CoordinatorURL"))
	} else if err := coordclient.CheckURLs(c.CoordinatorURL); err != nil {
		errs = append(errs, fmt.Errorf("Config.CoordinatorURL: %w: use e.g. https://clustral.example.com, or several replicas comma-separated", err))
	}
	if c.JoinToken == "" {
		errs = append(errs, errors.New("no join token: set Config.JoinToken to the cluster's join token (clustral clusters add prints one)"))
	}
	if c.HTTPClient != nil && c.HTTPClient.Timeout != 0 {
		errs = append(errs, errors.New("Config.HTTPClient has a Timeout, which would cut the long-lived map stream: set it to zero"))
	}
	if c.Upstream == nil {
		errs = append(errs, errors.New("no kube-apiserver config: set Config.Upstream (rest.InClusterConfig, or a kubeconfig)"))
	}
	if c.WireGuardPort < 0 || c.WireGuardPort > 65535 {
		errs = append(errs, fmt.Errorf("Config.WireGuardPort %d is not a UDP port: use 1-65535, or 0 for a free one", c.WireGuardPort))
	}
	if c.AuditDir == "" {
		errs = append(errs, errors.New("no audit spool directory: set Config.AuditDir to a directory kept across restarts"))
	}
	if c.Live {
		if _, err := live.ParseKinds(c.LiveKinds); err != nil {
			errs = append(errs, fmt.Errorf("Config.LiveKinds: %w", err))
		}
		if c.LiveUser != "" && !strings.HasPrefix(c.LiveUser, "system:") {
			errs = append(errs, fmt.Errorf("Config.LiveUser %q could be taken by a login: use a name under system: (no login can be one), e.g. %s", c.LiveUser, DefaultLiveUser))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	return nil
}

// Run runs an agent until ctx is done: it registers with the cluster's
// join token, joins the mesh, and serves the identity-aware Kubernetes
// proxy (Proxy) on its overlay addresses, port 443, inside a userspace
// network stack only. Besides, it keeps the network map streamed from the
// coordinator, serves the certificate the coordinator renews over that
// stream, spools an audit event per request to Config.AuditDir and ships
// them, and serves health and metrics on Config.HealthListen.
//
// When ctx is done, Run drains: /readyz turns unready, the agent
// deregisters so devices send new requests to the cluster's other agents,
// and open requests get Config.DrainTimeout to finish. Run then returns
// nil. It returns early with an error when registration fails (a
// refusal is a *CoordinatorError), when the coordinator refuses the node
// token, or when an overlay listener fails. Run waits for every goroutine
// it starts before it returns.
func Run(ctx context.Context, cfg Config) error {
	if cfg.HealthListener != nil {
		defer cfg.HealthListener.Close()
	}
	if err := cfg.validate(); err != nil {
		return err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	host := cfg.Hostname
	if host == "" {
		host = mesh.Hostname()
	}

	// The audit spool comes first: what a previous run left is shipped
	// along with this run's events.
	sp, err := spool.Open(spool.Options{Dir: cfg.AuditDir, MaxEvents: cfg.AuditMaxEvents, Logger: log})
	if err != nil {
		return err
	}
	defer sp.Close()
	if n := sp.Len(); n > 0 {
		log.Info("audit spool resumed", "dir", cfg.AuditDir, "waiting", n)
	}
	recDir := cfg.RecordingDir
	if recDir == "" {
		recDir = filepath.Join(cfg.AuditDir, "recordings")
	}
	recorder, err := recording.New(recording.Options{Dir: recDir, MaxBytes: cfg.RecordingMaxBytes})
	if err != nil {
		return err
	}
	for _, rec := range recorder.Recovered() {
		log.Warn("finished the recording of a session the last agent did not end", "recording", rec.ID, "bytes", rec.Bytes)
		auditTo(sp, log)(rescuedEvent(rec, time.Now()))
	}

	// Register: fresh WireGuard and TLS keys; the join token buys overlay
	// addresses, a node token and a serving certificate for the TLS key.
	wgKey, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return fmt.Errorf("generate WireGuard key: %w", err)
	}
	csr, tlsKey, err := NewCSR()
	if err != nil {
		return fmt.Errorf("TLS key: %w", err)
	}
	reg, err := register(ctx, coordclient.New(cfg.CoordinatorURL, cfg.JoinToken, hc), proto.RegisterAgentRequest{
		PublicKey: proto.Key(wgKey.PublicKey()),
		Hostname:  host,
		CSR:       csr,
	}, log)
	if err != nil {
		return err
	}
	log.Info("agent registered", "cluster", reg.Cluster, "node", reg.NodeID, "addresses", reg.Addresses)
	api := coordclient.New(cfg.CoordinatorURL, reg.NodeToken, hc)
	deregister := sync.OnceFunc(func() {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := api.Deregister(dctx); err != nil {
			log.Warn("deregister agent", "err", err)
		}
	})
	defer deregister()
	serving := &servingCert{key: tlsKey}
	if err := serving.set(reg.Certificate); err != nil {
		return err
	}

	// Join the mesh.
	m, err := mesh.Join(mesh.Config{PrivateKey: wgKey, Registration: reg, ListenPort: cfg.WireGuardPort, Logger: log})
	if err != nil {
		return err
	}
	defer m.Close()

	// Serve. Every goroutine started from here on is waited for before
	// Run returns: the deferred calls below stop them, then wg.Wait.
	var wg sync.WaitGroup
	defer wg.Wait()
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()

	metrics := agentMetrics(reg.Cluster, m.Node, sp, serving)
	var view *live.Source
	if cfg.Live {
		if view, err = newLiveSource(cfg, log); err != nil {
			return err
		}
		metrics.MustRegister(view.Collectors(reg.Cluster)...)
		defer view.Start(serveCtx)()
	}
	proxy, err := NewProxy(ProxyConfig{Cluster: reg.Cluster, Upstream: cfg.Upstream, Peers: m.Node, Logger: log,
		RateLimit: cfg.RateLimit, RateBurst: cfg.RateBurst, Audit: auditTo(sp, log), Metrics: metrics,
		Recorder: recorder, Live: view})
	if err != nil {
		return err
	}
	defer proxy.Close()
	defer m.Node.OnChange(func(node.Change) { proxy.Reevaluate() })()
	// The coordinator renews the short-lived serving certificate over the
	// map stream; handshakes pick up the new one at once.
	defer m.Node.OnChange(func(ch node.Change) {
		if !ch.CertificateChanged {
			return
		}
		if err := serving.set(m.Node.Certificate()); err != nil {
			log.Error("renewed certificate refused; serving the old one", "err", err)
			return
		}
		log.Info("serving certificate renewed", "expires", serving.expires())
	})()

	var ready atomic.Bool
	hl := cfg.HealthListener
	if hl == nil {
		addr := cfg.HealthListen
		if addr == "" {
			addr = DefaultHealthListen
		}
		if hl, err = net.Listen("tcp", addr); err != nil {
			return fmt.Errorf("health listener: %w", err)
		}
	}
	hsrv := &http.Server{Handler: healthHandler(&ready, metrics), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute}
	wg.Go(func() { hsrv.Serve(hl) })
	defer hsrv.Close()
	log.Info("health endpoints", "addr", hl.Addr().String())

	// errc has room for every goroutine that reports to it, so none
	// blocks once Run has stopped listening.
	errc := make(chan error, len(reg.Addresses)+1)
	for _, p := range reg.Addresses {
		l, err := m.Stack.ListenTCP(netip.AddrPortFrom(p.Addr(), 443))
		if err != nil {
			return fmt.Errorf("listen on overlay %s:443: %w", p.Addr(), err)
		}
		wg.Go(func() { errc <- proxy.ServeTLSFunc(l, serving.get) })
	}
	// The hook goes in before the stream starts: a snapshot applied in
	// between would otherwise leave the agent unready until the next one.
	readyChanged := make(chan struct{}, 1) // for the status report
	defer m.Node.OnChange(func(ch node.Change) {
		if ch.Snapshot && !ready.Swap(true) {
			select {
			case readyChanged <- struct{}{}:
			default:
			}
		}
	})()
	wg.Go(func() {
		errc <- m.Run(serveCtx, mesh.Coordinator{Client: api})
	})
	// Live sessions: reported on change and every interval; ended when
	// the map stream names them.
	defer m.Node.OnChange(func(ch node.Change) {
		for _, id := range ch.EndStreams {
			if !proxy.EndStream(id) {
				log.Info("an administrator ended a live session that had ended already", "correlation", id)
			}
		}
	})()
	wg.Go(func() {
		reportStatus(serveCtx, proxy.LiveChanged(), readyChanged, proto.AgentStatusInterval, func() proto.AgentStatus {
			return proxy.status(version.Get().Version, ready.Load(), pathCounts(m))
		}, api.ReportStatus, log)
	})
	// Shipping goes on while requests drain, and stops when Run returns;
	// what is left waits in the spool for the next start.
	shipCtx, stopShip := context.WithCancel(context.Background())
	defer stopShip()
	wg.Go(func() { sp.Ship(shipCtx, api.ShipAudit, 0) })
	wg.Go(func() {
		recorder.Ship(shipCtx, func(ctx context.Context, id string, body io.Reader) error {
			_, err := api.PutRecording(ctx, id, body)
			return err
		}, func(id string, err error) {
			log.Warn("session recording not shipped; keeping it and retrying", "recording", id, "err", err)
		})
	})
	wg.Go(func() {
		recorder.ShipLive(shipCtx, api.AppendRecording, recording.LiveInterval, func(id string, err error) {
			log.Debug("live part of a session recording not shipped; trying again", "recording", id, "err", err)
		})
	})

	// Wait.
	select {
	case <-ctx.Done():
		// Drain: leave the maps first, so devices send new requests to
		// the cluster's other agents, then let open requests finish.
		ready.Store(false)
		log.Info("draining", "timeout", cfg.DrainTimeout)
		deregister()
		dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
		defer cancel()
		proxy.Shutdown(dctx)
		return nil
	case err := <-errc:
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
}

// The client rate of the live view's reviews and lists.
const (
	liveQPS   = 200
	liveBurst = 400
)

// newLiveSource builds the live view of cfg: its informers and reviews
// go to the apiserver as cfg.LiveUser, impersonated.
func newLiveSource(cfg Config, log *slog.Logger) (*live.Source, error) {
	kinds, err := live.ParseKinds(cfg.LiveKinds)
	if err != nil {
		return nil, err
	}
	rc := rest.CopyConfig(cfg.Upstream)
	rc.Impersonate = rest.ImpersonationConfig{UserName: cmp.Or(cfg.LiveUser, DefaultLiveUser)}
	// An RBAC change has every viewer's access reviewed again at once:
	// a few reviews per kind and namespace per distinct identity. The
	// client-go default (5/s) would take minutes over that.
	rc.QPS, rc.Burst = liveQPS, liveBurst
	dc, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("live view client: %w", err)
	}
	return live.New(live.Config{Kinds: kinds, Client: dc, Logger: log})
}

// register registers the agent with its join token. While the
// coordinator cannot be reached (it may not be up yet when the pod
// starts) it tries again every registerRetry, up to registerRetries
// times; a refusal ends it at once.
func register(ctx context.Context, api *coordclient.Client, req proto.RegisterAgentRequest, log *slog.Logger) (proto.RegisterResponse, error) {
	var reg proto.RegisterResponse
	err := coordclient.Retry(ctx, coordclient.Fixed(registerRetry, registerRetries), func(ctx context.Context) error {
		var err error
		reg, err = api.RegisterAgent(ctx, req)
		return err
	}, func(err error, _ time.Duration) {
		log.Warn("coordinator unreachable, retrying", "err", err)
	})
	if ctx.Err() != nil && err == ctx.Err() {
		return reg, err
	}
	if err != nil {
		return reg, fmt.Errorf("register agent: %w", err)
	}
	return reg, nil
}

// auditTo returns the proxy's audit hook: events go to the spool, which
// warns itself when it is full.
func auditTo(sp *spool.Spool, log *slog.Logger) func(proto.AuditEvent) {
	return func(e proto.AuditEvent) {
		if err := sp.Append(e); err != nil && !errors.Is(err, spool.ErrFull) {
			log.Error("audit spool", "err", err)
		}
	}
}

// pathCounts counts m's peers by how packets reach them, of those whose
// path is known.
func pathCounts(m *mesh.Mesh) proto.PathCounts {
	var pc proto.PathCounts
	for _, p := range m.Node.Peers() {
		switch path, _ := m.PathView(p.Key); path {
		case "direct":
			pc.Direct++
		case "relayed":
			pc.Relayed++
		}
	}
	return pc
}
