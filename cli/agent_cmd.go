package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/time/rate"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustral/clustral/agent"
	"github.com/clustral/clustral/agent/spool"
	"github.com/clustral/clustral/node"
	"github.com/clustral/clustral/node/mesh"
	"github.com/clustral/clustral/proto"
)

func newAgentCmd(g *globals) *cobra.Command {
	var (
		coord, tokenFile, token, kubeconfig, caFile string
		healthListen, logFormat, logLevel           string
		wgPort, rateBurst                           int
		rateQPS                                     float64
		drain                                       time.Duration
		auditDir                                    string
		auditMax                                    int
		insecure                                    bool
	)
	c := &cobra.Command{
		Use:   "agent",
		Short: "Run the in-cluster agent: the identity-aware Kubernetes proxy on the mesh",
		Long: `Run the agent. It generates its own WireGuard and TLS keys, registers with
the cluster's join token, joins the mesh with an outbound connection to the
coordinator, and serves the identity-aware Kubernetes proxy on its overlay
address :443 (inside the userspace network stack only, never on the pod
network).

Inside a cluster it uses the pod's service account (in-cluster config);
--kubeconfig is for running outside one. Every flag can also be set as
CLUSTRAL_<FLAG> (e.g. CLUSTRAL_JOIN_TOKEN).`,
		Example: `  clustral agent --coordinator https://clustral.example.com --join-token-file /etc/clustral/join-token
  clustral agent --coordinator http://127.0.0.1:7443 --join-token-file token --kubeconfig ~/.kube/config`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := bindEnvAndFile(c, "CLUSTRAL", ""); err != nil {
				return err
			}
			log, err := serverLogger(logFormat, logLevel)
			if err != nil {
				return err
			}
			if coord == "" {
				return usageError{errors.New("--coordinator is required (the coordinator's URL)")}
			}
			if coord, err = coordinatorURL(coord, insecure); err != nil {
				return usageError{err}
			}
			if tokenFile != "" {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("read join token: %w", err)
				}
				token = strings.TrimSpace(string(b))
			}
			if token == "" {
				return usageError{errors.New("no join token: pass --join-token-file or set CLUSTRAL_JOIN_TOKEN (clustral clusters add prints one)")}
			}
			var upstream *rest.Config
			if kubeconfig != "" {
				upstream, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
			} else {
				upstream, err = rest.InClusterConfig()
				if err != nil {
					err = fmt.Errorf("%w (outside a cluster, pass --kubeconfig)", err)
				}
			}
			if err != nil {
				return fmt.Errorf("kube-apiserver config: %w", err)
			}
			hc, err := newHTTPClient(caFile, nil)
			if err != nil {
				return err
			}
			if auditDir == "" {
				if auditDir, err = defaultAuditDir(); err != nil {
					return err
				}
			}
			a := &agentRun{coord: coord, token: token, upstream: upstream, hc: hc, wgPort: wgPort, log: log, drain: drain,
				rateLimit: rate.Limit(rateQPS), rateBurst: rateBurst, auditDir: auditDir, auditMax: auditMax}
			return a.run(c.Context(), healthListen)
		},
	}
	f := c.Flags()
	f.StringVar(&coord, "coordinator", "", "coordinator URL")
	f.StringVar(&tokenFile, "join-token-file", "", "file holding the cluster's join token")
	f.StringVar(&token, "join-token", "", "the cluster's join token (prefer --join-token-file or CLUSTRAL_JOIN_TOKEN)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig for kube-apiserver (default: in-cluster config)")
	f.StringVar(&caFile, "ca-file", "", "PEM bundle to trust for the coordinator")
	f.BoolVar(&insecure, "insecure", false, "allow a plain http:// coordinator URL on a host other than this machine")
	f.StringVar(&healthListen, "health-listen", ":8080", "address of /healthz, /readyz and /metrics (Prometheus)")
	f.IntVar(&wgPort, "wg-port", 0, "WireGuard UDP port (default: a free port)")
	f.DurationVar(&drain, "drain-timeout", 20*time.Second, "on SIGTERM, how long open requests may finish")
	f.StringVar(&auditDir, "audit-dir", "", "directory of the audit spool, one per agent (locked while in use); keep it across restarts of the agent (default: $STATE_DIRECTORY/audit under systemd, /var/lib/clustral/agent-audit as root, else $XDG_STATE_HOME/clustral/agent-audit)")
	f.IntVar(&auditMax, "audit-spool-max-events", spool.DefaultMaxEvents, "audit events the spool keeps while the coordinator is unreachable; when full, new events are dropped with a warning and counted")
	f.Float64Var(&rateQPS, "rate-limit-qps", float64(agent.DefaultRateLimit), "requests per second each user may start through the proxy (sustained); negative turns the limit off")
	f.IntVar(&rateBurst, "rate-limit-burst", agent.DefaultRateBurst, "requests each user may start at once above --rate-limit-qps; negative turns the limit off")
	f.StringVar(&logFormat, "log-format", "json", "log format: json or text")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	return c
}

type agentRun struct {
	coord    string
	token    string
	upstream *rest.Config
	hc       *http.Client
	wgPort   int
	log      *slog.Logger
	drain    time.Duration
	// rateLimit and rateBurst are the proxy's per-user limits.
	rateLimit rate.Limit
	rateBurst int
	// auditDir holds the audit spool, auditMax bounds it.
	auditDir string
	auditMax int
}

func (a *agentRun) run(ctx context.Context, healthListen string) error {
	log := a.log
	sp, err := spool.Open(spool.Options{Dir: a.auditDir, MaxEvents: a.auditMax, Logger: log})
	if err != nil {
		return err
	}
	defer sp.Close()
	if n := sp.Len(); n > 0 {
		log.Info("audit spool resumed", "dir", a.auditDir, "waiting", n)
	}
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return err
	}
	tlsKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "clustral-agent"}}, tlsKey)
	if err != nil {
		return err
	}
	api := &apiClient{base: a.coord, token: a.token, hc: a.hc}
	var reg proto.RegisterResponse
	req := proto.RegisterAgentRequest{PublicKey: proto.Key(priv.PublicKey()), Hostname: mesh.Hostname(), CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))}
	// The coordinator may not be up yet when the pod starts: retry.
	for attempt := 0; ; attempt++ {
		err = api.do(ctx, "POST", proto.APIVersion+"/agents", req, &reg)
		var pe *problemError
		if err == nil || errors.As(err, &pe) || attempt >= 30 {
			break
		}
		log.Warn("coordinator unreachable, retrying", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	if err != nil {
		return fmt.Errorf("register agent: %w", cliErr(err))
	}
	log.Info("agent registered", "cluster", reg.Cluster, "node", reg.NodeID, "addresses", reg.Addresses)
	nodeAPI := &apiClient{base: a.coord, token: reg.NodeToken, hc: a.hc}
	var deregisterOnce sync.Once
	deregister := func() {
		deregisterOnce.Do(func() {
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := nodeAPI.do(dctx, "DELETE", proto.APIVersion+"/nodes/self", nil, nil); err != nil {
				log.Warn("deregister agent", "err", err)
			}
		})
	}
	defer deregister()

	serving := &servingCert{key: tlsKey}
	if err := serving.set(reg.Certificate); err != nil {
		return err
	}
	m, err := mesh.Join(mesh.Config{PrivateKey: priv, Registration: reg, ListenPort: a.wgPort, Logger: log})
	if err != nil {
		return err
	}
	defer m.Close()

	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cl := prometheus.Labels{"cluster": reg.Cluster}
	relayBytes := func(dir string, f func(node.PathStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "clustral_relay_bytes_total", ConstLabels: prometheus.Labels{"cluster": reg.Cluster, "direction": dir},
			Help: "WireGuard bytes sent (tx) and received (rx) through the coordinator's relay.",
		}, func() float64 { return float64(f(m.Node.Bind().Stats(node.PathRelay))) })
	}
	metrics.MustRegister(
		relayBytes("tx", func(s node.PathStats) uint64 { return s.TxBytes }),
		relayBytes("rx", func(s node.PathStats) uint64 { return s.RxBytes }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "clustral_audit_spool_events", ConstLabels: cl,
			Help: "Audit events spooled on local disk, not yet shipped to the coordinator.",
		}, func() float64 { return float64(sp.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "clustral_agent_certificate_expiry_timestamp_seconds", ConstLabels: cl,
			Help: "When the agent's serving certificate expires (Unix time). The coordinator renews it over the map stream; alert when it gets close.",
		}, func() float64 { return float64(serving.expires().Unix()) }),
	)
	proxy, err := agent.New(agent.Config{Cluster: reg.Cluster, Upstream: a.upstream, Peers: m.Node, Logger: log,
		RateLimit: a.rateLimit, RateBurst: a.rateBurst, Audit: auditTo(sp, log), Metrics: metrics})
	if err != nil {
		return err
	}
	defer proxy.Close()
	remove := m.Node.OnChange(func(node.Change) { proxy.Reevaluate() })
	defer remove()
	// The coordinator renews the short-lived serving certificate over the
	// map stream; handshakes pick up the new one at once.
	removeRenew := m.Node.OnChange(func(ch node.Change) {
		if !ch.CertificateChanged {
			return
		}
		if err := serving.set(m.Node.Certificate()); err != nil {
			log.Error("renewed certificate refused; serving the old one", "err", err)
			return
		}
		log.Info("serving certificate renewed", "expires", serving.expires())
	})
	defer removeRenew()

	var ready atomic.Bool
	hl, err := net.Listen("tcp", healthListen)
	if err != nil {
		return fmt.Errorf("health listener: %w", err)
	}
	hmux := http.NewServeMux()
	hmux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	hmux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not connected to the mesh yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	hmux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{Registry: metrics}))
	hsrv := &http.Server{Handler: hmux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute}
	go hsrv.Serve(hl)
	defer hsrv.Close()
	log.Info("health endpoints", "addr", hl.Addr().String())

	errc := make(chan error, 4)
	for _, p := range reg.Addresses {
		l, err := m.Stack.ListenTCP(netip.AddrPortFrom(p.Addr(), 443))
		if err != nil {
			return fmt.Errorf("listen on overlay %s:443: %w", p.Addr(), err)
		}
		go func() {
			errc <- proxy.ServeTLSFunc(l, serving.get)
		}()
	}
	// The hook goes in before the stream starts: a snapshot applied in
	// between would otherwise leave the agent unready until the next one.
	removeReady := m.Node.OnChange(func(ch node.Change) {
		if ch.Snapshot {
			ready.Store(true)
		}
	})
	defer removeReady()
	go func() { errc <- m.Run(ctx, nodeAPI.meshCoordinator()) }()
	// Shipping goes on while requests drain, and stops before the agent
	// deregisters; what is left waits in the spool for the next start.
	shipCtx, stopShip := context.WithCancel(context.Background())
	defer stopShip()
	go sp.Ship(shipCtx, shipAudit(nodeAPI), 0)

	select {
	case <-ctx.Done():
		// Drain: leave the maps first, so devices send new requests to
		// the cluster's other agents, then let open requests finish.
		ready.Store(false)
		log.Info("draining", "timeout", a.drain)
		deregister()
		dctx, cancel := context.WithTimeout(context.Background(), a.drain)
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

// defaultAuditDir is the agent's audit spool directory when --audit-dir
// is not given: a state directory, never a shared temporary one. Under
// systemd (StateDirectory=) it is $STATE_DIRECTORY/audit; for root
// /var/lib/clustral/agent-audit; otherwise under $XDG_STATE_HOME
// (~/.local/state).
func defaultAuditDir() (string, error) {
	if sd, _, _ := strings.Cut(os.Getenv("STATE_DIRECTORY"), ":"); sd != "" {
		return filepath.Join(sd, "audit"), nil
	}
	if os.Geteuid() == 0 {
		return "/var/lib/clustral/agent-audit", nil
	}
	if x := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(x) {
		return filepath.Join(x, "clustral", "agent-audit"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" || home == "/" {
		return "", usageError{errors.New("no state directory for the audit spool (no home directory): pass --audit-dir")}
	}
	return filepath.Join(home, ".local", "state", "clustral", "agent-audit"), nil
}

// servingCert is the agent's serving certificate for key, replaced whole
// when the coordinator renews it. Its methods are safe for concurrent use.
type servingCert struct {
	key *ecdsa.PrivateKey
	cur atomic.Pointer[tls.Certificate]
}

// set serves certPEM from now on, if it is a certificate for the agent's
// key; otherwise it returns why and the current certificate stays.
func (s *servingCert) set(certPEM string) error {
	c, err := tlsCertificate(certPEM, s.key)
	if err != nil {
		return err
	}
	s.cur.Store(&c)
	return nil
}

// get is a tls.Config.GetCertificate.
func (s *servingCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.cur.Load(), nil }

func (s *servingCert) expires() time.Time { return s.cur.Load().Leaf.NotAfter }

func tlsCertificate(certPEM string, key *ecdsa.PrivateKey) (tls.Certificate, error) {
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := tls.X509KeyPair([]byte(certPEM), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("agent certificate from the coordinator: %w", err)
	}
	return cert, nil
}
