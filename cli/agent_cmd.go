package cli

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/time/rate"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustral/clustral/agent"
	"github.com/clustral/clustral/agent/live"
	"github.com/clustral/clustral/agent/recording"
	"github.com/clustral/clustral/agent/spool"
)

func newAgentCmd(g *globals) *cobra.Command {
	var (
		coord, tokenFile, token, kubeconfig, caFile string
		healthListen, logFormat, logLevel           string
		wgPort, rateBurst                           int
		rateQPS                                     float64
		drain                                       time.Duration
		auditDir, recDir                            string
		recMax                                      int64
		auditMax                                    int
		insecure, liveOn                            bool
		liveKinds                                   []string
		liveUser, pprofAddr                         string
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
			if err := servePprof(c.Context(), pprofAddr, log); err != nil {
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
			return agentError(agent.Run(c.Context(), agent.Config{
				CoordinatorURL:    coord,
				JoinToken:         token,
				HTTPClient:        hc,
				Upstream:          upstream,
				RateLimit:         rate.Limit(rateQPS),
				RateBurst:         rateBurst,
				WireGuardPort:     wgPort,
				HealthListen:      healthListen,
				DrainTimeout:      drain,
				AuditDir:          auditDir,
				AuditMaxEvents:    auditMax,
				RecordingDir:      recDir,
				RecordingMaxBytes: recMax,
				Live:              liveOn,
				LiveKinds:         liveKinds,
				LiveUser:          liveUser,
				Logger:            log,
			}))
		},
	}
	f := c.Flags()
	f.StringVar(&coord, "coordinator", "", "coordinator URL, or several replicas' URLs comma-separated (the agent moves to the next when one fails)")
	f.StringVar(&tokenFile, "join-token-file", "", "file holding the cluster's join token")
	f.StringVar(&token, "join-token", "", "the cluster's join token (prefer --join-token-file or CLUSTRAL_JOIN_TOKEN)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig for kube-apiserver (default: in-cluster config)")
	f.StringVar(&caFile, "ca-file", "", "PEM bundle to trust for the coordinator")
	f.BoolVar(&insecure, "insecure", false, "allow a plain http:// coordinator URL on a host other than this machine")
	f.StringVar(&healthListen, "health-listen", agent.DefaultHealthListen, "address of /healthz, /readyz and /metrics (Prometheus)")
	f.IntVar(&wgPort, "wg-port", 0, "WireGuard UDP port (default: a free port)")
	f.DurationVar(&drain, "drain-timeout", agent.DefaultDrainTimeout, "on SIGTERM, how long open requests may finish")
	f.StringVar(&auditDir, "audit-dir", "", "directory of the audit spool, one per agent (locked while in use); keep it across restarts of the agent (default: $STATE_DIRECTORY/audit under systemd, /var/lib/clustral/agent-audit as root, else $XDG_STATE_HOME/clustral/agent-audit)")
	f.StringVar(&recDir, "recording-dir", "", "directory of the exec and attach session recordings, for roles with a recording policy (default: recordings in --audit-dir)")
	f.Int64Var(&recMax, "recording-max-bytes", recording.DefaultMaxBytes, "size cap of one session recording; at the cap a marker is recorded and the rest is not (a role that requires recording ends the session)")
	f.IntVar(&auditMax, "audit-spool-max-events", spool.DefaultMaxEvents, "audit events the spool keeps while the coordinator is unreachable; when full, new events are dropped with a warning and counted")
	f.Float64Var(&rateQPS, "rate-limit-qps", float64(agent.DefaultRateLimit), "requests per second each user may start through the proxy (sustained); negative turns the limit off")
	f.IntVar(&rateBurst, "rate-limit-burst", agent.DefaultRateBurst, "requests each user may start at once above --rate-limit-qps; negative turns the limit off")
	f.BoolVar(&liveOn, "live", false, "serve the live cluster view (clustral ui) on the overlay: one watch per kind, each viewer filtered by their own access")
	f.StringSliceVar(&liveKinds, "live-kinds", nil, "kinds the live view follows, e.g. pods,deployments.apps (default: "+strings.Join(live.DefaultKinds, ",")+"; secrets only if named)")
	f.StringVar(&liveUser, "live-user", agent.DefaultLiveUser, "Kubernetes user impersonated to list and watch those kinds and to create subjectaccessreviews (bind it a ClusterRole; see deploy/agent/components/live-view)")
	f.StringVar(&logFormat, "log-format", "json", "log format: json or text")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	addPprofFlag(f, &pprofAddr)
	return c
}

// agentError gives agent.Run's registration failures the exit code and
// hint of every other command's coordinator errors.
func agentError(err error) error {
	var ce *agent.CoordinatorError
	var ue *url.Error
	switch {
	case errors.As(err, &ce):
		return withHint(problemExit(ce), err, ce.Hint)
	case errors.As(err, &ue):
		return withHint(exitUnreach, err, "check the URL and your network, or run: clustral doctor")
	}
	return err
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
