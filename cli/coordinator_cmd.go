package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/clustral/clustral/coordinator"
	"github.com/clustral/clustral/coordinator/store"
)

// serverLogger returns the structured logger the servers use.
func serverLogger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError{fmt.Errorf("log level %q: use debug, info, warn or error", level)}
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	default:
		return nil, usageError{fmt.Errorf("log format %q: use json or text", format)}
	}
}

// reloadOnHUP reloads the coordinator's TLS certificate on every signal on
// hup until ctx is done. ReloadTLS logs the outcome.
func reloadOnHUP(ctx context.Context, hup <-chan os.Signal, srv *coordinator.Server, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if srv.Config().TLSCertFile == "" {
				log.Info("SIGHUP: no TLS certificate to reload (the coordinator serves plain HTTP)")
				continue
			}
			log.Info("SIGHUP: reloading the TLS certificate")
			srv.ReloadTLS()
		}
	}
}

func newCoordinatorCmd(g *globals) *cobra.Command {
	d := coordinator.Defaults()
	var (
		cfg                 coordinator.Config
		configFile          string
		v4, v6              string
		secretFile          string
		logFormat, logLevel string
	)
	c := &cobra.Command{
		Use:   "coordinator",
		Short: "Run the clustral coordinator (control plane)",
		Long: `Run the coordinator: OIDC login, device and agent registration, overlay
addresses, roles and the network map stream. State lives in one bbolt file
in --data-dir, or with --store etcd in an etcd cluster (--etcd-endpoints,
--etcd-cert, --etcd-key, --etcd-ca) under --etcd-prefix.

Every setting can also come from the environment as CLUSTRAL_<SETTING>
(e.g. CLUSTRAL_OIDC_ISSUER) or from a YAML file given with --config whose
keys are the flag names. Flags win over the environment, which wins over
the file. Without TLS the coordinator serves plain HTTP, on loopback only.

Who may log in: --allow-email-domain, --allow-group and --allow-user each
admit the users they name (administrators always may). Without any, everyone
the identity provider signs in may log in; the coordinator refuses to start
that way with a public provider (Google, GitHub, GitLab, Apple, Microsoft's
multi-tenant endpoints) and warns with any other.

Audit export: each --audit-export streams the audit log, in order and at
least once, to a SIEM; every destination keeps its own cursor in the store,
so a restart resumes where it stopped, and a destination that is down is
retried with back-off and catches up later without holding up the
coordinator. Retention keeps the events a destination has not taken yet.
  syslog+tls://HOST[:6514]    RFC 5424 over TLS, octet-counting framing;
                              ca=FILE cert=FILE key=FILE app-name= hostname=
                              sd-id= facility= (default 13, log audit)
  otlp+https://HOST[:4318][/v1/logs]
                              OpenTelemetry logs over OTLP/HTTP; ca= cert=
                              key=, headers-file=FILE or headers-env=VAR with
                              lines "Name: value" (tokens never in the URL)
Both take name= (metrics label and cursor), start=oldest|now, batch=,
retry-min=, retry-max= and timeout= as query parameters. The lag of each is
clustral_coordinator_audit_export_lag_seconds{destination=NAME}.

On SIGHUP (systemctl reload) the coordinator reads --tls-cert and --tls-key
again and serves the new pair to new connections; open connections and
map streams are kept. If the new pair is not valid, it logs an error and
keeps serving the old one. Other settings are read only at start.`,
		Example: `  # development, on loopback, with embedded defaults
  clustral coordinator --oidc-issuer https://dex.example.com --oidc-client-id clustral \
      --oidc-client-secret-file /etc/clustral/oidc-secret --admin alice@example.com \
      --allow-email-domain example.com

  # production
  clustral coordinator --config /etc/clustral/coordinator.yaml

  # stream the audit log to a syslog server and an OpenTelemetry collector
  clustral coordinator --config /etc/clustral/coordinator.yaml \
      --audit-export 'syslog+tls://siem.example.com:6514?ca=/etc/clustral/siem-ca.pem' \
      --audit-export 'otlp+https://otel.example.com:4318/v1/logs?headers-file=/etc/clustral/otlp-headers'`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := bindEnvAndFile(c, "CLUSTRAL", configFile); err != nil {
				return err
			}
			log, err := serverLogger(logFormat, logLevel)
			if err != nil {
				return err
			}
			cfg.Logger = log
			if cfg.IPv4Prefix, err = netip.ParsePrefix(v4); err != nil {
				return usageError{fmt.Errorf("--ipv4-prefix %q: %w", v4, err)}
			}
			if v6 != "" {
				if cfg.IPv6Prefix, err = netip.ParsePrefix(v6); err != nil {
					return usageError{fmt.Errorf("--ipv6-prefix %q: %w", v6, err)}
				}
			}
			if secretFile != "" {
				b, err := os.ReadFile(secretFile)
				if err != nil {
					return fmt.Errorf("read OIDC client secret: %w", err)
				}
				cfg.OIDC.ClientSecret = strings.TrimSpace(string(b))
			}
			// Catch SIGHUP before anything can be served: its default
			// action would end the process.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			srv, err := coordinator.New(c.Context(), cfg)
			if err != nil {
				return err
			}
			defer srv.Close()
			go reloadOnHUP(c.Context(), hup, srv, log)
			return srv.ListenAndServe(c.Context(), nil)
		},
	}
	c.AddCommand(newCoordinatorBackupCmd(g))
	c.AddCommand(newCoordinatorRestoreCmd(g))
	f := c.Flags()
	f.StringVar(&configFile, "config", "", "YAML config file (keys are the flag names)")
	f.StringVar(&cfg.Listen, "listen", d.Listen, "address to serve the API on")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", "", "address to serve /metrics, /healthz and /readyz on, plain HTTP, instead of /metrics on the API (e.g. 10.0.0.5:9090)")
	f.StringVar(&cfg.PublicURL, "public-url", "", "URL nodes and browsers reach the coordinator at (default http(s)://<listen>)")
	f.StringVar(&cfg.DataDir, "data-dir", d.DataDir, "directory of the bbolt store and the audit checkpoint key")
	f.StringVar(&cfg.Store, "store", coordinator.StoreBolt, "where the coordinator keeps its state: bolt (one file in --data-dir) or etcd (--etcd-*)")
	f.StringSliceVar(&cfg.Etcd.Endpoints, "etcd-endpoints", nil, "etcd client URLs, with --store etcd (e.g. https://etcd-0.example.com:2379, comma-separated or repeated)")
	f.StringVar(&cfg.Etcd.CertFile, "etcd-cert", "", "TLS client certificate for etcd (PEM)")
	f.StringVar(&cfg.Etcd.KeyFile, "etcd-key", "", "key of --etcd-cert (PEM)")
	f.StringVar(&cfg.Etcd.CAFile, "etcd-ca", "", "PEM bundle that signs etcd's serving certificate (default: the system roots)")
	f.StringVar(&cfg.Etcd.Prefix, "etcd-prefix", store.DefaultEtcdPrefix, "etcd key prefix of the coordinator's state; nothing else may write under it")
	f.StringVar(&cfg.ReplicaListen, "replica-listen", "", "with --store etcd, TCP address on which this replica takes the relay links of the other replicas, mutual TLS (e.g. :7947); off by default, and then the relay pairs only nodes on the same replica")
	f.StringVar(&cfg.ReplicaAdvertise, "replica-advertise", "", "address the other replicas dial for --replica-listen: this replica's own host:port, not the load balancer's (default: --replica-listen, which must then name a host)")
	f.StringVar(&cfg.TLSCertFile, "tls-cert", "", "TLS certificate file (PEM)")
	f.StringVar(&cfg.TLSKeyFile, "tls-key", "", "TLS key file (PEM)")
	f.StringVar(&cfg.OIDC.Issuer, "oidc-issuer", "", "OIDC issuer URL")
	f.StringVar(&cfg.OIDC.ClientID, "oidc-client-id", "", "OIDC client id of the coordinator")
	f.StringVar(&cfg.OIDC.ClientSecret, "oidc-client-secret", "", "OIDC client secret (prefer --oidc-client-secret-file or CLUSTRAL_OIDC_CLIENT_SECRET)")
	f.StringVar(&secretFile, "oidc-client-secret-file", "", "file holding the OIDC client secret")
	f.StringVar(&cfg.OIDC.CAFile, "oidc-ca-file", "", "PEM bundle to trust for the OIDC issuer")
	f.StringVar(&cfg.OIDC.LoginClaim, "oidc-login-claim", d.OIDC.LoginClaim, "ID token claim that becomes the user's login (the name Kubernetes sees)")
	f.StringVar(&cfg.OIDC.GroupsClaim, "oidc-groups-claim", d.OIDC.GroupsClaim, "ID token claim holding the user's groups")
	f.StringSliceVar(&cfg.OIDC.Scopes, "oidc-scopes", d.OIDC.Scopes, "scopes to request besides openid")
	f.StringSliceVar(&cfg.OIDC.ExtraAudiences, "oidc-extra-audience", nil, "further client ids accepted for --id-token-file logins, as audience (aud) or as the client the token was issued to (azp)")
	f.StringSliceVar(&cfg.Admins, "admin", nil, "administrator login, the value of --oidc-login-claim (repeatable)")
	f.StringSliceVar(&cfg.AdminGroups, "admin-group", nil, "OIDC group whose members are administrators (repeatable)")
	f.StringSliceVar(&cfg.Allow.EmailDomains, "allow-email-domain", nil, "let users whose verified email is in this domain log in (repeatable)")
	f.StringSliceVar(&cfg.Allow.Groups, "allow-group", nil, "let members of this OIDC group log in (repeatable)")
	f.StringSliceVar(&cfg.Allow.Users, "allow-user", nil, "let this login log in (repeatable)")
	f.StringVar(&v4, "ipv4-prefix", d.IPv4Prefix.String(), "overlay IPv4 range")
	f.StringVar(&v6, "ipv6-prefix", "", "overlay IPv6 range (default: a random ULA /48 chosen once per mesh)")
	f.StringVar(&cfg.MeshDomain, "mesh-domain", d.MeshDomain, "DNS suffix of mesh names")
	f.DurationVar(&cfg.SessionTTL, "session-ttl", d.SessionTTL, "how long a login lasts")
	f.DurationVar(&cfg.AuditRetention, "audit-retention", d.AuditRetention, "how long audit events are kept (whole days older are pruned); negative keeps them all")
	f.DurationVar(&cfg.RecordingRetention, "recording-retention", 0, "how long session recordings are kept (from the session's start); 0 keeps them all")
	f.DurationVar(&cfg.AuditCheckpointInterval, "audit-checkpoint-interval", d.AuditCheckpointInterval, "how often the coordinator signs a checkpoint of its audit log while it grows (with the key <data-dir>/"+coordinator.AuditKeyFile+")")
	f.StringArrayVar(&cfg.AuditExport, "audit-export", nil, "stream the audit log to this destination, syslog+tls://HOST:6514?ca=FILE or otlp+https://HOST:4318/v1/logs?headers-file=FILE (repeatable; see above)")
	f.DurationVar(&cfg.AgentTTL, "agent-ttl", d.AgentTTL, "reclaim an agent after it has been gone this long")
	f.DurationVar(&cfg.PendingRequestTTL, "pending-request-ttl", d.PendingRequestTTL, "expire an access request nobody decided after this long")
	f.IntVar(&cfg.MaxDevicesPerUser, "max-devices-per-user", coordinator.DefaultMaxDevicesPerUser, "devices one user may have registered at once")
	f.IntVar(&cfg.MaxPendingRequests, "max-pending-requests", coordinator.DefaultMaxPendingRequests, "access requests one user may have waiting for a decision")
	f.StringVar(&cfg.STUNListen, "stun-listen", "", "UDP address of endpoint discovery for NAT traversal (default: port 3478 on the --listen host; 0 turns it off)")
	f.BoolVar(&cfg.RelayOnly, "relay-only", false, "pass on no node's endpoints, so that every pair of nodes talks through the relay instead of directly over UDP")
	f.IntVar(&cfg.RelayRate, "relay-rate", coordinator.DefaultRelayRate, "bytes per second one node may send through the relay")
	f.IntVar(&cfg.SourceRate, "source-rate", coordinator.DefaultSourceRate, "unauthenticated requests (logins, callbacks, refused registrations) one address may make per minute; beyond it 429; negative turns the limit off")
	f.IntVar(&cfg.SourceBurst, "source-burst", coordinator.DefaultSourceBurst, "unauthenticated requests one address may make at once")
	f.StringVar(&logFormat, "log-format", "json", "log format: json or text")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	return c
}
