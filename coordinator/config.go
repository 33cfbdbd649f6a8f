package coordinator

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/clustral/clustral/coordinator/auditexport"
	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/recordings"
	"github.com/clustral/clustral/coordinator/store"
)

// The store backends (Config.Store).
const (
	StoreBolt = "bolt"
	StoreEtcd = "etcd"
)

// Config configures a coordinator. The zero value of every optional field
// selects the embedded default; see Defaults.
type Config struct {
	// Listen is the address the HTTP(S) API listens on.
	Listen string
	// MetricsListen, when set, is a second address, plain HTTP, that
	// serves GET /metrics, /healthz and /readyz, for a scraper on a private
	// network; the API then no longer serves /metrics. Empty serves
	// /metrics on the API, to anyone who reaches it.
	MetricsListen string
	// STUNListen is the UDP address of endpoint discovery for NAT
	// traversal, served by ListenAndServe: empty means DefaultSTUNPort on
	// the Listen host, best effort (a busy port only turns discovery
	// off); "0" or "off" turns it off; a bare port means that port on the
	// Listen host.
	STUNListen string
	// ReplicaListen is the TCP address on which a replica (Store
	// StoreEtcd) accepts the relay links of the other replicas, which
	// send it the datagrams for nodes attached to its relay (mutual TLS
	// with the replicas' shared identity; see peers.go). Empty turns the
	// links off: a node then reaches through the relay only the nodes
	// attached to the same replica. Served by ListenAndServe.
	ReplicaListen string
	// ReplicaAdvertise is the address the other replicas dial to reach
	// ReplicaListen: this replica's own address, not a load balancer's.
	// Empty means ReplicaListen, which must then name a host.
	ReplicaAdvertise string
	// RelayOnly keeps the endpoints nodes publish to the coordinator: no
	// node learns where its peers are, so every pair talks through the
	// relay. For networks where UDP between nodes is unwanted, and for
	// tests of the relay.
	RelayOnly bool
	// PublicURL is the URL nodes and browsers reach the coordinator at. It
	// defaults to http(s)://Listen.
	PublicURL string
	// DataDir holds the bbolt store (with Store "bolt") and the audit
	// checkpoint key.
	DataDir string
	// Store selects the backend of the coordinator's state: StoreBolt
	// (the default, one file in DataDir) or StoreEtcd (an etcd cluster,
	// configured by Etcd).
	Store string
	// Etcd says how to reach etcd when Store is StoreEtcd.
	Etcd store.EtcdConfig
	// Recordings stores the session recordings agents ship; nil means
	// the directory "recordings" in DataDir.
	Recordings recordings.Store
	// TLSCertFile and TLSKeyFile serve HTTPS. Without them the coordinator
	// serves plain HTTP, which it allows only on a loopback address.
	TLSCertFile string
	TLSKeyFile  string

	OIDC OIDCConfig

	// Admins are the logins (values of OIDC.LoginClaim, compared without
	// regard to case) with administrator rights; AdminGroups are OIDC
	// groups whose members are administrators. An email names an
	// administrator only when the login claim is the (verified) email.
	Admins      []string
	AdminGroups []string

	// Allow decides who may log in at all. Administrators named by
	// Admins or AdminGroups may always log in. With no rule, everyone the
	// identity provider signs in may log in: New refuses that for an
	// issuer anyone can get an account at (see PublicIssuer) and warns
	// for any other.
	Allow AllowRules

	// IPv4Prefix and IPv6Prefix are the overlay ranges. IPv6Prefix defaults
	// to a random ULA /48 chosen once per mesh and kept in the store.
	IPv4Prefix netip.Prefix
	IPv6Prefix netip.Prefix
	// MeshDomain is the DNS suffix of mesh names (<cluster>.<MeshDomain>).
	MeshDomain string

	// SessionTTL is how long a login lasts.
	SessionTTL time.Duration
	// ConsoleSessionTTL is how long a web console's browser session
	// lasts, at most SessionTTL.
	ConsoleSessionTTL time.Duration
	// LoginTTL bounds how long a started login waits for the browser.
	LoginTTL time.Duration
	// MaxPendingLogins caps the logins waiting for a browser; past it
	// login/start answers 503 with Retry-After. Default 10,000.
	MaxPendingLogins int
	// AgentTTL reclaims an agent that has not connected for this long.
	AgentTTL time.Duration
	// AgentGrace is how long an agent's map stream may stay closed (the
	// agent killed, or cut off) before the agent leaves the maps of its
	// users' devices, so they stop dialing it; it returns when its stream
	// opens again. After a coordinator start, its agents get as long to
	// reconnect. A new agent enters the maps when its stream first opens.
	// Default 5 s.
	AgentGrace time.Duration
	// PendingRequestTTL expires an access request nobody decided.
	PendingRequestTTL time.Duration
	// MaxDevicesPerUser bounds the devices one user may have registered
	// at once; MaxPendingRequests the access requests one user may have
	// waiting for a decision. 0 means DefaultMaxDevicesPerUser and
	// DefaultMaxPendingRequests.
	MaxDevicesPerUser  int
	MaxPendingRequests int
	// AuditRetention is how long audit events are kept; whole days older
	// than it are pruned. Zero means DefaultAuditRetention, negative keeps
	// everything.
	AuditRetention time.Duration
	// RecordingRetention is how long session recordings are kept: a
	// recording whose session started longer ago is removed (with an
	// AL006I event), unless an audit event that names it has not been
	// taken by an export destination yet. Zero, the default, keeps them
	// all: a recording is evidence, removed only when an operator says
	// so.
	RecordingRetention time.Duration
	// AuditCheckpointInterval is how often a checkpoint of the audit log
	// is signed while the log grows. Zero means
	// DefaultAuditCheckpointInterval.
	AuditCheckpointInterval time.Duration
	// AuditExport are the destinations the audit log is streamed to, one
	// URL each (see auditexport.Parse): syslog+tls://host:6514?ca=FILE or
	// otlp+https://host:4318/v1/logs?headers-file=FILE. Each has its own
	// cursor in the store; retention keeps what one has not taken yet.
	AuditExport []string
	// auditExport are AuditExport parsed, by withDefaults.
	auditExport []auditexport.Destination
	// AuditExportPoll, when set, replaces auditexport.DefaultPoll (tests).
	AuditExportPoll time.Duration

	// RelayRate is the bytes per second one node may send through the
	// relay, RelayBurst how many at once, and RelayQueue how many
	// datagrams may wait for one destination node. 0 means the defaults
	// (DefaultRelayRate, DefaultRelayBurst, DefaultRelayQueue).
	RelayRate  int
	RelayBurst int
	RelayQueue int
	// RelayQueueBytes bounds the bytes of frames waiting for one
	// destination node; 0 means DefaultRelayQueueBytes.
	RelayQueueBytes int

	// SourceRate is how many unauthenticated requests (login start, ID
	// token exchange, OIDC callback, registrations with a refused
	// credential) one source address may make per minute, after bursts of
	// SourceBurst; beyond it they are answered 429 with Retry-After. 0
	// means DefaultSourceRate and DefaultSourceBurst; negative turns the
	// limit off (for load tests from one address).
	SourceRate  int
	SourceBurst int

	Logger *slog.Logger
	// Now is the clock; tests inject one.
	Now func() time.Time
	// NewID, when set, makes the identifiers of new users, clusters,
	// roles, assignments, access requests and nodes (prefix "usr",
	// "cls", "rol", "asg", "req", "dev", "agt"; the result is the whole
	// id) instead of random ones, for tests that compare output with
	// recorded files. Its results must be unique. It is called with the
	// coordinator's lock held and must not call back into it.
	NewID func(prefix string) string
	// AddrRand, when set, is where overlay address allocation draws the
	// place its search for a free address starts, instead of
	// crypto/rand: 8 bytes, big-endian, per address, the IPv4 one first,
	// taken modulo the prefix's size. Tests that compare output with
	// recorded files script it to get fixed addresses.
	AddrRand io.Reader
	// Version is the version GET /api/v1/info reports; empty means this
	// binary's (version.Get). Tests that run a CLI of one version against
	// a coordinator of another in one process set it.
	Version string
}

// OIDCConfig names the identity provider. The coordinator is its only
// client.
type OIDCConfig struct {
	Issuer       string
	ClientID     string
	ClientSecret string
	// Scopes requested besides openid; default email, profile, groups.
	Scopes []string
	// LoginClaim is the claim that becomes the user's login, the name
	// Kubernetes sees. Default "email".
	LoginClaim string
	// GroupsClaim holds the user's groups. Default "groups".
	GroupsClaim string
	// CAFile is a PEM bundle to trust for the issuer, for private IdPs.
	CAFile string
	// ExtraAudiences are further audiences accepted for direct ID-token
	// exchange (for example a CI system's client id).
	ExtraAudiences []string
}

// Per-user limits; see Config.
const (
	DefaultMaxDevicesPerUser  = 20
	DefaultMaxPendingRequests = 10
)

// DefaultConsoleSessionTTL is the default of Config.ConsoleSessionTTL:
// a browser session lasts a working day.
const DefaultConsoleSessionTTL = 8 * time.Hour

// Defaults returns the embedded defaults.
func Defaults() Config {
	return Config{
		Listen:                  "127.0.0.1:7443",
		DataDir:                 "clustral-data",
		IPv4Prefix:              netip.MustParsePrefix("100.64.0.0/10"),
		MeshDomain:              "clustral.internal",
		SessionTTL:              12 * time.Hour,
		ConsoleSessionTTL:       DefaultConsoleSessionTTL,
		LoginTTL:                10 * time.Minute,
		AgentTTL:                24 * time.Hour,
		AgentGrace:              5 * time.Second,
		PendingRequestTTL:       24 * time.Hour,
		AuditRetention:          DefaultAuditRetention,
		AuditCheckpointInterval: DefaultAuditCheckpointInterval,
		OIDC: OIDCConfig{
			Scopes:      []string{"email", "profile", "groups"},
			LoginClaim:  "email",
			GroupsClaim: "groups",
		},
	}
}

// withDefaults fills zero fields from Defaults and validates the result.
func (c Config) withDefaults() (Config, error) {
	d := Defaults()
	c.Listen = cmp.Or(c.Listen, d.Listen)
	c.DataDir = cmp.Or(c.DataDir, d.DataDir)
	c.Store = cmp.Or(c.Store, StoreBolt)
	switch c.Store {
	case StoreBolt:
		if len(c.Etcd.Endpoints) > 0 {
			return c, errors.New("etcd endpoints are set but the store is bbolt: set --store etcd, or remove --etcd-endpoints")
		}
	case StoreEtcd:
		if err := c.Etcd.Check(); err != nil {
			return c, err
		}
	default:
		return c, fmt.Errorf("store %q: use --store bolt (one file in --data-dir, the default) or --store etcd", c.Store)
	}
	if err := c.checkReplicaListen(); err != nil {
		return c, err
	}
	if !c.IPv4Prefix.IsValid() {
		c.IPv4Prefix = d.IPv4Prefix
	}
	c.MeshDomain = cmp.Or(c.MeshDomain, d.MeshDomain)
	c.SessionTTL = cmp.Or(c.SessionTTL, d.SessionTTL)
	c.ConsoleSessionTTL = min(cmp.Or(c.ConsoleSessionTTL, d.ConsoleSessionTTL), c.SessionTTL)
	c.LoginTTL = cmp.Or(c.LoginTTL, d.LoginTTL)
	if c.MaxPendingLogins <= 0 {
		c.MaxPendingLogins = DefaultMaxPendingLogins
	}
	c.AgentTTL = cmp.Or(c.AgentTTL, d.AgentTTL)
	c.AgentGrace = cmp.Or(c.AgentGrace, d.AgentGrace)
	c.PendingRequestTTL = cmp.Or(c.PendingRequestTTL, d.PendingRequestTTL)
	if c.MaxDevicesPerUser <= 0 {
		c.MaxDevicesPerUser = DefaultMaxDevicesPerUser
	}
	if c.MaxPendingRequests <= 0 {
		c.MaxPendingRequests = DefaultMaxPendingRequests
	}
	c.AuditRetention = cmp.Or(c.AuditRetention, d.AuditRetention)
	c.AuditCheckpointInterval = cmp.Or(c.AuditCheckpointInterval, d.AuditCheckpointInterval)
	if c.RecordingRetention < 0 {
		return c, fmt.Errorf("recording retention %s is negative: give 0 to keep recordings for ever, or how long to keep them, e.g. 2160h", c.RecordingRetention)
	}
	if c.AuditCheckpointInterval < time.Second {
		return c, fmt.Errorf("audit checkpoint interval %s is too short: use at least 1s, e.g. 10m", c.AuditCheckpointInterval)
	}
	c.auditExport = nil
	for _, raw := range c.AuditExport {
		d, err := auditexport.Parse(raw)
		if err != nil {
			return c, err
		}
		c.auditExport = append(c.auditExport, d)
	}
	if len(c.OIDC.Scopes) == 0 {
		c.OIDC.Scopes = d.OIDC.Scopes
	}
	c.OIDC.LoginClaim = cmp.Or(c.OIDC.LoginClaim, d.OIDC.LoginClaim)
	c.OIDC.GroupsClaim = cmp.Or(c.OIDC.GroupsClaim, d.OIDC.GroupsClaim)
	if c.RelayRate <= 0 {
		c.RelayRate = DefaultRelayRate
	}
	if c.RelayBurst <= 0 {
		c.RelayBurst = DefaultRelayBurst
	}
	c.RelayBurst = max(c.RelayBurst, 64<<10) // one datagram always fits
	if c.RelayQueue <= 0 {
		c.RelayQueue = DefaultRelayQueue
	}
	if c.RelayQueueBytes <= 0 {
		c.RelayQueueBytes = DefaultRelayQueueBytes
	}
	c.SourceRate = cmp.Or(c.SourceRate, DefaultSourceRate)
	if c.SourceBurst <= 0 {
		c.SourceBurst = DefaultSourceBurst
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}

	tlsOn := c.TLSCertFile != "" || c.TLSKeyFile != ""
	if tlsOn && (c.TLSCertFile == "" || c.TLSKeyFile == "") {
		return c, errors.New("TLS needs both --tls-cert and --tls-key")
	}
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return c, fmt.Errorf("listen address %q: %w (use host:port, e.g. 127.0.0.1:7443)", c.Listen, err)
	}
	if !tlsOn && !isLoopbackHost(host) {
		return c, fmt.Errorf("listen address %q is not loopback and no TLS is configured: set --tls-cert and --tls-key, or listen on 127.0.0.1 for development", c.Listen)
	}
	if c.PublicURL == "" {
		scheme := "http"
		if tlsOn {
			scheme = "https"
		}
		c.PublicURL = scheme + "://" + c.Listen
	}
	u, err := url.Parse(c.PublicURL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return c, fmt.Errorf("public URL %q is not an http(s) URL (e.g. https://clustral.example.com)", c.PublicURL)
	}
	if u.Scheme == "http" && !isLoopbackHost(u.Hostname()) {
		return c, fmt.Errorf("public URL %q uses plain HTTP on a non-loopback host: use https", c.PublicURL)
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	if !c.IPv4Prefix.Addr().Is4() || c.IPv4Prefix.Bits() > 24 {
		return c, fmt.Errorf("IPv4 overlay prefix %s must be IPv4 and at least a /24", c.IPv4Prefix)
	}
	if c.IPv6Prefix.IsValid() && (!c.IPv6Prefix.Addr().Is6() || c.IPv6Prefix.Bits() > 64) {
		return c, fmt.Errorf("IPv6 overlay prefix %s must be IPv6 and at least a /64", c.IPv6Prefix)
	}
	if c.OIDC.Issuer != "" && c.OIDC.ClientID == "" {
		return c, errors.New("OIDC issuer is set but client id is not: set --oidc-client-id")
	}
	c.Allow.EmailDomains = slices.Clone(c.Allow.EmailDomains)
	for i, d := range c.Allow.EmailDomains {
		c.Allow.EmailDomains[i] = strings.TrimPrefix(d, "@")
	}
	if err := c.Allow.check(); err != nil {
		return c, err
	}
	if c.OIDC.Issuer != "" && c.Allow.empty() && PublicIssuer(c.OIDC.Issuer) {
		return c, fmt.Errorf("OIDC issuer %s lets anyone with an account sign in, and no allow rule says who may use this coordinator: set --allow-email-domain, --allow-group or --allow-user", c.OIDC.Issuer)
	}
	return c, nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.IsLoopback()
}

// AllowRules say who may log in. A user who matches any rule may; with no
// rule at all, everyone may.
type AllowRules struct {
	// EmailDomains admit users whose verified email is in one of these
	// domains (exactly: "example.com" does not admit "sub.example.com").
	EmailDomains []string
	// Groups admit members of one of these OIDC groups.
	Groups []string
	// Users admit these logins (values of the login claim), compared
	// without regard to case.
	Users []string
}

// empty reports whether no rule is set.
func (a AllowRules) empty() bool {
	return len(a.EmailDomains)+len(a.Groups)+len(a.Users) == 0
}

// permits reports whether a user with claims c may log in.
func (a AllowRules) permits(c idClaims) bool {
	if a.empty() {
		return true
	}
	for _, u := range a.Users {
		if strings.EqualFold(u, c.Login) {
			return true
		}
	}
	if at := strings.LastIndexByte(c.Email, '@'); at >= 0 && c.Email != "" {
		domain := c.Email[at+1:]
		for _, d := range a.EmailDomains {
			if strings.EqualFold(d, domain) {
				return true
			}
		}
	}
	for _, g := range a.Groups {
		if slices.Contains(c.Groups, g) {
			return true
		}
	}
	return false
}

// check validates the rules' syntax.
func (a AllowRules) check() error {
	for _, d := range a.EmailDomains {
		d = strings.TrimPrefix(d, "@")
		if d == "" || strings.ContainsAny(d, "@ /*") || !strings.Contains(d, ".") {
			return fmt.Errorf("allowed email domain %q is not a domain name: use e.g. example.com (no @, no wildcard)", d)
		}
	}
	for _, g := range a.Groups {
		if strings.TrimSpace(g) == "" {
			return errors.New("an allowed group is empty: remove the empty --allow-group")
		}
	}
	for _, u := range a.Users {
		if strings.TrimSpace(u) == "" {
			return errors.New("an allowed user is empty: remove the empty --allow-user")
		}
	}
	return nil
}

// publicIssuers are identity providers where anyone can get an account;
// logging in through one of them says nothing about who may use the mesh.
var publicIssuers = []struct{ host, path string }{
	{"accounts.google.com", ""},
	{"token.actions.githubusercontent.com", ""}, // any repository's workflow
	{"github.com", ""},
	{"gitlab.com", ""},
	{"appleid.apple.com", ""},
	{"login.microsoftonline.com", "/common"},
	{"login.microsoftonline.com", "/organizations"},
	{"login.microsoftonline.com", "/consumers"},
	{"login.microsoftonline.com", "/9188040d-6c67-4c5b-b112-36a304b66dad"}, // personal accounts
	{"login.live.com", ""},
}

// PublicIssuer reports whether issuer is a well-known identity provider
// where anyone can get an account, so that a coordinator trusting it must
// say who may log in (Config.Allow).
func PublicIssuer(issuer string) bool {
	u, err := url.Parse(issuer)
	if err != nil {
		return false
	}
	host := strings.ToLower(u.Hostname())
	for _, p := range publicIssuers {
		if host == p.host && (p.path == "" || strings.HasPrefix(strings.ToLower(u.Path), p.path)) {
			return true
		}
	}
	return false
}

// Defaults of the audit settings, and the name of the checkpoint signing
// key in the data directory (see package auditlog).
const (
	DefaultAuditRetention          = auditlog.DefaultRetention
	DefaultAuditCheckpointInterval = auditlog.DefaultCheckpointInterval
	AuditKeyFile                   = auditlog.KeyFile
)

// auditKeyPath is where the audit checkpoint key is kept.
// checkReplicaListen checks ReplicaListen and ReplicaAdvertise.
func (c Config) checkReplicaListen() error {
	if c.ReplicaListen == "" {
		if c.ReplicaAdvertise != "" {
			return errors.New("--replica-advertise is set without --replica-listen: set both, or neither")
		}
		return nil
	}
	if c.Store != StoreEtcd {
		return fmt.Errorf("--replica-listen %s links coordinator replicas, which need a shared store: set --store etcd, or remove --replica-listen", c.ReplicaListen)
	}
	host, port, err := net.SplitHostPort(c.ReplicaListen)
	if err != nil || port == "" {
		return fmt.Errorf("--replica-listen %q is not host:port: use e.g. 10.0.0.11:7947 or :7947", c.ReplicaListen)
	}
	adv := c.ReplicaAdvertise
	if adv == "" {
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			return fmt.Errorf("--replica-listen %s names no address the other replicas can dial: set --replica-advertise to this replica's own host:port (not the load balancer's)", c.ReplicaListen)
		}
		return nil
	}
	ahost, aport, err := net.SplitHostPort(adv)
	if ip := net.ParseIP(ahost); err != nil || ahost == "" || aport == "" || aport == "0" || (ip != nil && ip.IsUnspecified()) {
		return fmt.Errorf("--replica-advertise %q is not a host:port the other replicas can dial: use this replica's own address, e.g. 10.0.0.11:7947", adv)
	}
	return nil
}

func (c Config) auditKeyPath() string { return filepath.Join(c.DataDir, AuditKeyFile) }
