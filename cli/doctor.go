package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustral/clustral/cli/device"
	"github.com/clustral/clustral/cli/kubeconfig"
	"github.com/clustral/clustral/node"
	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

// Check outcomes.
const (
	checkOK   = "ok"
	checkWarn = "warn"
	checkFail = "fail"
	checkSkip = "skip"
)

// maxClockSkew is how far the local clock may be from the coordinator's
// before sessions and certificates start failing in confusing ways.
const maxClockSkew = 30 * time.Second

// checkResult is one line of clustral doctor. Its JSON names are stable.
type checkResult struct {
	Name   string `json:"name"`
	Status string `json:"status"` // ok, warn, fail or skip
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// doctorReport is the output of clustral doctor.
type doctorReport struct {
	OK     bool          `json:"ok"`
	Checks []checkResult `json:"checks"`
}

func (r *doctorReport) add(name, status, detail, fix string) {
	r.Checks = append(r.Checks, checkResult{Name: name, Status: status, Detail: detail, Fix: fix})
}

func newDoctorCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "doctor",
		Short: "Diagnose the path from kubectl to your clusters, and say how to fix what is broken",
		Long: `Check, in order: DNS, TCP and TLS to the coordinator, its health, the
identity provider's discovery document, your clock against the
coordinator's, your session, the tunnel, the kubeconfig contexts (present,
and the current one pointing at the running tunnel), the SOCKS5 proxy and
its credential, the mesh DNS of --tun mode, and the WireGuard handshake
with each agent.

Each failed check names what is wrong and the command that fixes it.
clustral doctor exits 1 when a check fails.`,
		Example: `  clustral doctor
  clustral doctor -o json`,
		Args: cobra.NoArgs,
	}
	out := outputFlag(c)
	c.RunE = func(c *cobra.Command, _ []string) error {
		r, err := runDoctor(c.Context(), g)
		if err != nil {
			return err
		}
		color := g.style(g.stdout)
		if err := render(g.stdout, *out, r, func(tw *tabwriter.Writer) {
			for _, ch := range r.Checks {
				mark := map[string]string{checkOK: color.green("[ ok ]"), checkWarn: color.yellow("[warn]"), checkFail: color.red("[FAIL]"), checkSkip: color.dim("[skip]")}[ch.Status]
				fmt.Fprintf(tw, "%s %s: %s\n", mark, ch.Name, ch.Detail)
				if ch.Fix != "" {
					fmt.Fprintf(tw, "       %s\n", color.dim("fix: "+ch.Fix))
				}
			}
		}); err != nil {
			return err
		}
		if !r.OK {
			var failed []string
			for _, ch := range r.Checks {
				if ch.Status == checkFail {
					failed = append(failed, ch.Name)
				}
			}
			return withHint(exitError, fmt.Errorf("%d check(s) failed: %s", len(failed), strings.Join(failed, ", ")), "fix the first failure and run clustral doctor again")
		}
		return nil
	}
	return c
}

// runDoctor runs every check. An error means the checks could not run at
// all; failed checks are in the report.
func runDoctor(ctx context.Context, g *globals) (*doctorReport, error) {
	dir, err := g.dir()
	if err != nil {
		return nil, err
	}
	r := &doctorReport{}
	up := checkCoordinator(ctx, g, dir, r)
	checkTunnel(ctx, dir, r, up)
	r.OK = !slices.ContainsFunc(r.Checks, func(c checkResult) bool { return c.Status == checkFail })
	return r, nil
}

// checkCoordinator runs the coordinator, identity and session checks and
// reports the clusters the user may reach (nil when unknown).
func checkCoordinator(ctx context.Context, g *globals, dir string, r *doctorReport) *proto.Whoami {
	base, hc, err := g.coordinator()
	if err != nil {
		r.add("coordinator", checkFail, "no coordinator configured and not logged in", "clustral login <coordinator-url>")
		return nil
	}
	hc.Timeout = 5 * time.Second
	if replicas := coordclient.SplitURLs(base); len(replicas) > 1 {
		base = pickReplica(ctx, hc, replicas, r)
	}
	u, err := url.Parse(base)
	if err != nil {
		r.add("coordinator", checkFail, fmt.Sprintf("coordinator URL %q is not valid: %v", base, err), "clustral login <coordinator-url>")
		return nil
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	skipRest := func(why string) {
		for _, n := range []string{"health", "oidc", "clock", "session"} {
			r.add(n, checkSkip, why, "")
		}
	}

	// DNS.
	if net.ParseIP(host) != nil {
		r.add("dns", checkOK, host+" is an IP address; nothing to resolve", "")
	} else {
		addrs, err := net.DefaultResolver.LookupHost(ctx, host)
		if err != nil {
			r.add("dns", checkFail, fmt.Sprintf("cannot resolve %s: %v", host, unwrapNet(err)), "check the coordinator URL (clustral config show), your DNS and VPN")
			r.add("tls", checkSkip, "no address to connect to", "")
			skipRest("coordinator unreachable")
			return nil
		}
		r.add("dns", checkOK, fmt.Sprintf("%s resolves to %s", host, strings.Join(addrs, ", ")), "")
	}

	// TCP, then TLS through the client that the CLI uses.
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, port))
	if err != nil {
		r.add("tls", checkFail, fmt.Sprintf("nothing answers at %s: the coordinator is down, or a firewall blocks the port (%v)", net.JoinHostPort(host, port), unwrapNet(err)), "check that the coordinator runs (systemctl status clustral-coordinator) and that you can reach "+base)
		skipRest("coordinator unreachable")
		return nil
	}
	conn.Close()
	resp, err := get(ctx, hc, base+"/healthz")
	switch {
	case err != nil:
		detail, fix := tlsDiagnosis(err, base)
		r.add("tls", checkFail, detail, fix)
		skipRest("coordinator unreachable")
		return nil
	case resp.TLS == nil:
		r.add("tls", checkWarn, "the coordinator speaks plain HTTP; sessions cross the network unencrypted", "serve the coordinator over HTTPS")
	default:
		leaf := resp.TLS.PeerCertificates[0]
		left := leaf.NotAfter.Sub(now())
		if left < 14*24*time.Hour {
			r.add("tls", checkWarn, fmt.Sprintf("certificate for %s expires in %s", host, humanDuration(left)), "renew the coordinator's certificate")
		} else {
			r.add("tls", checkOK, fmt.Sprintf("certificate for %s is trusted", host), "")
		}
	}

	// Health.
	if resp, err := get(ctx, hc, base+"/readyz"); err != nil || resp.StatusCode != http.StatusOK {
		detail := "the coordinator is not ready"
		if err != nil {
			detail += ": " + unwrapNet(err).Error()
		} else {
			detail += fmt.Sprintf(": %s %s", resp.Status, strings.TrimSpace(resp.body))
		}
		r.add("health", checkFail, detail, "see the coordinator's log (journalctl -u clustral-coordinator)")
	} else if name := resp.Header.Get(proto.HeaderReplica); name != "" {
		r.add("health", checkOK, fmt.Sprintf("the coordinator is ready (replica %s at %s)", name, base), "")
	} else {
		r.add("health", checkOK, "the coordinator is ready", "")
	}

	// Info: identity provider and clock.
	sent := now()
	info, err := fetchInfo(ctx, base, hc)
	if err != nil {
		r.add("oidc", checkSkip, "the coordinator does not answer /api/v1/info: "+oneLine(err.Error()), "")
		r.add("clock", checkSkip, "no coordinator time to compare with", "")
	} else {
		checkOIDC(ctx, hc, info.Issuer, r)
		local := sent.Add(now().Sub(sent) / 2)
		skew := info.Time.Sub(local)
		if skew > maxClockSkew || skew < -maxClockSkew {
			way := "ahead of"
			if skew > 0 {
				way = "behind"
			}
			r.add("clock", checkFail, fmt.Sprintf("your clock is %s %s the coordinator's; sessions and certificates will look expired or not yet valid", humanDuration(skew), way), "turn on time sync: timedatectl set-ntp true (Linux) or System Settings > Date & Time")
		} else {
			r.add("clock", checkOK, "within "+maxClockSkew.String()+" of the coordinator's", "")
		}
	}

	// Session.
	s, err := loadSession(dir)
	switch {
	case s == nil:
		r.add("session", checkFail, "not logged in", "clustral login "+base)
		return nil
	case err != nil:
		r.add("session", checkFail, fmt.Sprintf("your session expired %s ago", humanDuration(now().Sub(s.Session.ExpiresAt))), "clustral login "+s.Coordinator)
		return nil
	}
	api := coordclient.New(base, s.Session.Token, hc)
	who, err := api.Whoami(ctx)
	if err != nil {
		var pe *coordclient.Error
		if errors.As(err, &pe) && pe.Status == http.StatusUnauthorized {
			r.add("session", checkFail, "the coordinator rejected your session (revoked, or you logged out elsewhere): "+pe.Error(), "clustral login "+s.Coordinator)
		} else {
			r.add("session", checkFail, "cannot check your session: "+oneLine(err.Error()), "run clustral doctor again once the coordinator answers")
		}
		return nil
	}
	r.add("session", checkOK, fmt.Sprintf("%s, %s", who.User.Login, remaining(s.Session.ExpiresAt)), "")
	return &who
}

// checkOIDC fetches the issuer's discovery document, as a browser login
// would.
func checkOIDC(ctx context.Context, hc *http.Client, issuer string, r *doctorReport) {
	if issuer == "" {
		r.add("oidc", checkSkip, "the coordinator names no identity provider (logins with --id-token-file only)", "")
		return
	}
	wk := strings.TrimSuffix(issuer, "/") + "/.well-known/openid-configuration"
	resp, err := get(ctx, hc, wk)
	if err != nil {
		r.add("oidc", checkFail, fmt.Sprintf("cannot reach the identity provider at %s: %v", issuer, unwrapNet(err)), "browser logins need it: check your network, VPN or proxy for "+issuer)
		return
	}
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(resp.body), &doc) != nil {
		r.add("oidc", checkFail, fmt.Sprintf("%s answered %s, not a discovery document", wk, resp.Status), "the coordinator's --oidc-issuer must be the issuer URL, without /.well-known/...")
		return
	}
	if strings.TrimSuffix(doc.Issuer, "/") != strings.TrimSuffix(issuer, "/") {
		r.add("oidc", checkFail, fmt.Sprintf("the discovery document names issuer %s, not %s", doc.Issuer, issuer), "set the coordinator's --oidc-issuer to exactly "+doc.Issuer)
		return
	}
	r.add("oidc", checkOK, "identity provider "+issuer+" answers discovery", "")
}

// checkTunnel runs the tunnel, kubeconfig, SOCKS5 and WireGuard checks.
func checkTunnel(ctx context.Context, dir string, r *doctorReport, who *proto.Whoami) {
	tunnel, alive := device.ReadState(dir)
	switch {
	case tunnel == nil:
		r.add("tunnel", checkFail, "clustral up is not running", "clustral up")
	case !alive:
		r.add("tunnel", checkFail, fmt.Sprintf("clustral up (pid %d) stopped without cleaning up; its contexts point at a proxy that is gone", tunnel.PID), "clustral down && clustral up")
	case tunnel.Status != "connected":
		r.add("tunnel", checkWarn, fmt.Sprintf("clustral up (pid %d) is %s", tunnel.PID, tunnel.Status), "wait, or see clustral status")
	default:
		r.add("tunnel", checkOK, fmt.Sprintf("clustral up (pid %d) is connected; SOCKS5 on %s", tunnel.PID, tunnel.SOCKS), "")
	}

	// Kubeconfig.
	kw := kubeconfig.Writer{}
	if tunnel != nil {
		kw.Path = tunnel.Kubeconfig
	}
	cfg, err := kw.Load()
	if err != nil {
		r.add("kubeconfig", checkFail, fmt.Sprintf("cannot read %s: %v", kw.File(), err), "repair or move the file aside, then: clustral kube login <cluster>")
	} else {
		var problems []string
		fix := ""
		if alive {
			var missing []string
			for _, name := range tunnel.Contexts {
				if _, ok := cfg.Contexts[name]; !ok {
					missing = append(missing, name)
				}
			}
			if len(missing) > 0 {
				problems = append(problems, fmt.Sprintf("context %s is missing from %s (deleted?)", strings.Join(missing, ", "), kw.File()))
				fix = "clustral kube login " + strings.TrimPrefix(missing[0], kubeconfig.ContextName(""))
			}
		}
		cur := cfg.CurrentContext
		if kubeconfig.Managed(cfg, cur) {
			proxy := ""
			if cl := cfg.Clusters[cfg.Contexts[cur].Cluster]; cl != nil {
				if pu, err := url.Parse(cl.ProxyURL); err == nil {
					proxy = pu.Host
				}
			}
			switch {
			case !alive:
				problems = append(problems, fmt.Sprintf("current context %s points at %s, where no tunnel runs", cur, proxy))
				fix = firstNonEmpty(fix, "clustral up")
			case proxy != tunnel.SOCKS:
				problems = append(problems, fmt.Sprintf("current context %s points at %s, but the tunnel listens on %s", cur, proxy, tunnel.SOCKS))
				fix = firstNonEmpty(fix, "clustral kube login "+strings.TrimPrefix(cur, kubeconfig.ContextName("")))
			}
		}
		switch {
		case len(problems) > 0:
			r.add("kubeconfig", checkFail, strings.Join(problems, "; "), fix)
		case !alive:
			ours, _ := kw.Ours()
			if len(ours) > 0 {
				r.add("kubeconfig", checkFail, fmt.Sprintf("contexts %s point at a tunnel that is not running", strings.Join(ours, ", ")), "clustral up (or clustral down to remove them)")
			} else {
				r.add("kubeconfig", checkSkip, "no clustral contexts while the tunnel is down", "")
			}
		default:
			detail := fmt.Sprintf("%d context(s) in %s", len(tunnel.Contexts), kw.File())
			if kubeconfig.Managed(cfg, cur) {
				detail += "; current context " + cur + " uses the tunnel"
			}
			r.add("kubeconfig", checkOK, detail, "")
		}
	}

	if !alive {
		if left := device.LeftoverDNS(dir); left != nil {
			r.add("mesh dns", checkFail, fmt.Sprintf("the system's resolver still points at the mesh DNS of a clustral up that is gone (%s), so lookups wait on it", left.Describe()), "clustral down")
		}
		r.add("socks5", checkSkip, "the tunnel is not running", "")
		r.add("wireguard", checkSkip, "the tunnel is not running", "")
		return
	}
	if err := socksAuth(ctx, tunnel.SOCKS, tunnel.SOCKSUser, tunnel.SOCKSPass); err != nil {
		r.add("socks5", checkFail, fmt.Sprintf("the SOCKS5 proxy on %s: %v", tunnel.SOCKS, err), "clustral down && clustral up")
	} else {
		r.add("socks5", checkOK, "the proxy on "+tunnel.SOCKS+" accepts your credential", "")
	}
	agents, err := queryControl(ctx, dir)
	if err == nil && tunnel.DNS != nil {
		checkMeshDNS(ctx, tunnel.DNS, agents, r)
	}
	if err != nil {
		r.add("wireguard", checkFail, "clustral up does not answer on its status socket: "+unwrapNet(err).Error(), "clustral down && clustral up")
		return
	}
	if len(agents) == 0 {
		if who != nil && len(who.Clusters) > 0 {
			r.add("wireguard", checkFail, "no agent of your clusters is in the mesh", "ask an administrator whether the clusters' agents run: kubectl -n clustral logs ds/clustral-agent")
		} else {
			r.add("wireguard", checkSkip, "you may reach no cluster, so there is no agent to talk to", "")
		}
		return
	}
	for _, a := range agents {
		name := "wireguard " + a.Cluster + "/" + a.NodeID
		switch {
		case !a.Online:
			r.add(name, checkFail, fmt.Sprintf("agent %s of cluster %s is offline at the coordinator", a.Address, a.Cluster), "the agent lost the coordinator; check its pod: kubectl -n clustral logs ds/clustral-agent")
		case a.LastHandshake.IsZero():
			r.add(name, checkFail, fmt.Sprintf("no WireGuard handshake with %s yet (%s path)", a.Address, a.Path), "UDP may be blocked between you and the cluster; check firewalls, or wait for the relay")
		case now().Sub(a.LastHandshake) > node.HealthyAge:
			r.add(name, checkFail, fmt.Sprintf("last WireGuard handshake with %s was %s ago", a.Address, humanDuration(now().Sub(a.LastHandshake))), "the path broke: check the agent, and UDP between you and the cluster")
		default:
			r.add(name, checkOK, fmt.Sprintf("handshake %s ago with %s (%s)", humanDuration(now().Sub(a.LastHandshake)), a.Address, a.Path), "")
		}
	}
}

// lookupHost is the system's resolver, as programs use it; tests replace
// it.
var lookupHost = net.DefaultResolver.LookupHost

// checkMeshDNS resolves the first agent's cluster name with the system's
// resolver, as any program would in --tun mode, and expects the agents'
// addresses.
func checkMeshDNS(ctx context.Context, st *device.DNSState, agents []device.AgentView, r *doctorReport) {
	if len(agents) == 0 {
		r.add("mesh dns", checkSkip, "no agent in the mesh to resolve: "+st.Describe(), "")
		return
	}
	name := agents[0].Cluster + "." + st.Domain
	fix := "another program may have rewritten " + device.DefaultResolvConf + ": clustral down && clustral up --tun"
	if st.Method == device.DNSResolved {
		fix = "check the link in systemd-resolved (resolvectl status " + st.Link + "), then: clustral down && clustral up --tun"
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	addrs, err := lookupHost(ctx, name)
	if err != nil {
		r.add("mesh dns", checkFail, fmt.Sprintf("%s does not resolve through the system's resolver: %v (mesh DNS: %s)", name, unwrapNet(err), st.Describe()), fix)
		return
	}
	for _, a := range agents {
		if a.Cluster == agents[0].Cluster && slices.Contains(addrs, a.Address) {
			r.add("mesh dns", checkOK, fmt.Sprintf("%s resolves to %s (%s)", name, strings.Join(addrs, ", "), st.Describe()), "")
			return
		}
	}
	r.add("mesh dns", checkFail, fmt.Sprintf("%s resolves to %s, not to an agent of the cluster: another resolver answers for %s first (mesh DNS: %s)", name, strings.Join(addrs, ", "), st.Domain, st.Describe()), fix)
}

// socksAuth opens a SOCKS5 session to addr and authenticates with user and
// pass (RFC 1928 and RFC 1929), without connecting anywhere: it proves the
// proxy runs and takes the credential kubectl uses.
func socksAuth(ctx context.Context, addr, user, pass string) error {
	d := net.Dialer{Timeout: 3 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("nothing listens: %w", unwrapNet(err))
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte{5, 1, 2}); err != nil {
		return err
	}
	var b [2]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("no SOCKS5 greeting: %w", err)
	}
	if b[0] != 5 || b[1] != 2 {
		return fmt.Errorf("not clustral's SOCKS5 proxy (method %d)", b[1])
	}
	msg := append([]byte{1, byte(len(user))}, user...)
	msg = append(append(msg, byte(len(pass))), pass...)
	if _, err := c.Write(msg); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("no answer to authentication: %w", err)
	}
	if b[1] != 0 {
		return errors.New("it refuses the credential in up.json")
	}
	return nil
}

// tlsDiagnosis explains a failed HTTPS request to the coordinator.
func tlsDiagnosis(err error, base string) (detail, fix string) {
	var (
		ua  x509.UnknownAuthorityError
		hn  x509.HostnameError
		inv x509.CertificateInvalidError
		cv  *tls.CertificateVerificationError
	)
	switch {
	case errors.As(err, &ua) || (errors.As(err, &cv) && errors.As(cv.Err, &ua)):
		return "the coordinator's certificate is signed by an authority you do not trust", "clustral login " + base + " --ca-file <ca.pem> (or set CLUSTRAL_CA_FILE)"
	case errors.As(err, &hn):
		return "the coordinator's certificate is for another name: " + hn.Error(), "use the URL the certificate names: clustral login <that-url>"
	case errors.As(err, &inv):
		return "the coordinator's certificate is not valid: " + inv.Error(), "renew the coordinator's certificate, or check your clock"
	}
	return "HTTPS to the coordinator failed: " + unwrapNet(err).Error(), "check the URL and any proxy in between: clustral config show"
}

// unwrapNet drops the url.Error wrapping, which repeats the URL.
func unwrapNet(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

type fetched struct {
	*http.Response
	body string
}

func get(ctx context.Context, hc *http.Client, u string) (*fetched, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return &fetched{resp, string(b)}, nil
}

// pickReplica returns the first of several replicas' URLs that answers
// /readyz, which the checks that follow then examine, and reports how
// many answer; if none does, the first, whose checks then say why.
func pickReplica(ctx context.Context, hc *http.Client, replicas []string, r *doctorReport) string {
	var up []string
	for _, u := range replicas {
		if resp, err := get(ctx, hc, u+"/readyz"); err == nil && resp.StatusCode == http.StatusOK {
			up = append(up, u)
		}
	}
	switch {
	case len(up) == 0:
		r.add("replicas", checkFail, fmt.Sprintf("none of the %d coordinator replicas is ready", len(replicas)), "see below for the first one; check the others the same way")
		return replicas[0]
	case len(up) < len(replicas):
		r.add("replicas", checkWarn, fmt.Sprintf("%d of %d coordinator replicas are ready; using %s", len(up), len(replicas), up[0]), "see the log of the replicas that are not")
	default:
		r.add("replicas", checkOK, fmt.Sprintf("all %d coordinator replicas are ready; using %s", len(replicas), up[0]), "")
	}
	return up[0]
}
