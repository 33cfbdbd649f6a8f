package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustral/clustral/cli/device"
	"github.com/clustral/clustral/cli/kubeconfig"
	"github.com/clustral/clustral/proto"
)

// statusView is the output of clustral status. Its JSON field names are
// stable.
type statusView struct {
	Profile   string `json:"profile"`
	Connected bool   `json:"connected"`
	// Tunnel is "connected", "starting", "stopped" (the up process is
	// gone without cleaning up) or "down".
	Tunnel      string                   `json:"tunnel"`
	Coordinator string                   `json:"coordinator,omitempty"`
	User        string                   `json:"user,omitempty"`
	Session     time.Time                `json:"session_expires,omitzero"`
	Addresses   []string                 `json:"addresses,omitempty"`
	SOCKS       string                   `json:"socks,omitempty"`
	Kubeconfig  string                   `json:"kubeconfig,omitempty"`
	Contexts    []string                 `json:"contexts,omitempty"`
	Clusters    []proto.ReachableCluster `json:"clusters,omitempty"`
	// Grants are the roles that expire (just-in-time access).
	Grants []grantView `json:"grants,omitempty"`
	// CoordinatorHealth is "ok", or why GET /readyz failed.
	CoordinatorHealth string `json:"coordinator_health,omitempty"`
	// Replica names the coordinator replica that answered, and
	// ReplicaURL its URL, when the coordinator runs as several replicas.
	Replica    string             `json:"replica,omitempty"`
	ReplicaURL string             `json:"replica_url,omitempty"`
	Agents     []device.AgentView `json:"agents,omitempty"`
	// DNS describes the mesh DNS of --tun mode, or a resolver change a
	// stopped up left behind.
	DNS   string `json:"dns,omitempty"`
	Error string `json:"error,omitempty"`
}

type grantView struct {
	Cluster string    `json:"cluster"`
	Role    string    `json:"role"`
	Expires time.Time `json:"expires"`
}

func newStatusCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "status",
		Short: "Show the session, the tunnel, and the clusters you may reach",
		Example: `  clustral status
  clustral status -o json`,
		Args: cobra.NoArgs,
	}
	out := outputFlag(c)
	c.RunE = func(c *cobra.Command, _ []string) error {
		dir, err := g.dir()
		if err != nil {
			return err
		}
		v := statusView{Tunnel: "down"}
		v.Profile, _ = g.profileName()
		sess, api, serr := g.session()
		if sess != nil {
			v.Coordinator, v.User, v.Session = sess.Coordinator, sess.Session.User.Login, sess.Session.ExpiresAt
		}
		if serr == nil {
			who, err := api.Whoami(c.Context())
			if v.Replica = api.Replica(); v.Replica != "" {
				v.ReplicaURL = api.BaseURL()
			}
			if err != nil {
				v.Error = err.Error()
			} else {
				v.Clusters = who.Clusters
				for _, c := range who.Clusters {
					for _, r := range c.Roles {
						if r.Expires != nil {
							v.Grants = append(v.Grants, grantView{Cluster: c.Name, Role: r.Role, Expires: *r.Expires})
						}
					}
				}
			}
		} else {
			v.Error = serr.Error()
		}
		if sess != nil {
			v.CoordinatorHealth = "ok"
			if resp, err := get(c.Context(), api.HTTPClient(), api.BaseURL()+"/readyz"); err != nil {
				v.CoordinatorHealth = "unreachable: " + unwrapNet(err).Error()
			} else if resp.StatusCode != 200 {
				v.CoordinatorHealth = "not ready: " + resp.Status
			}
		}
		tunnel, alive := device.ReadState(dir)
		if tunnel != nil && !alive {
			v.Tunnel = "stopped"
		}
		if left := device.LeftoverDNS(dir); left != nil {
			v.DNS = "left behind by a stopped clustral up: " + left.Describe() + " (run clustral down)"
		}
		if alive {
			v.Connected = tunnel.Status == "connected"
			v.Tunnel = tunnel.Status
			v.Contexts = tunnel.Contexts
			v.Addresses, v.SOCKS, v.Kubeconfig = tunnel.Addresses, tunnel.SOCKS, tunnel.Kubeconfig
			if tunnel.DNS != nil {
				v.DNS = tunnel.DNS.Describe()
			}
			if ns, err := queryControl(c.Context(), dir); err == nil {
				v.Agents = ns
			}
		}
		if err := render(g.stdout, *out, v, func(tw *tabwriter.Writer) { printStatus(tw, v) }); err != nil {
			return err
		}
		if serr != nil && sess == nil {
			return serr
		}
		return nil
	}
	return c
}

func printStatus(tw *tabwriter.Writer, v statusView) {
	if v.User == "" {
		fmt.Fprintln(tw, "Not logged in. Run: clustral login <coordinator-url>")
		return
	}
	state := v.Tunnel
	switch v.Tunnel {
	case "down":
		state = "down (run clustral up)"
	case "stopped":
		state = "stopped without cleaning up (run clustral down && clustral up)"
	}
	fmt.Fprintf(tw, "Profile:\t%s\n", v.Profile)
	fmt.Fprintf(tw, "User:\t%s\n", v.User)
	fmt.Fprintf(tw, "Coordinator:\t%s (%s)\n", v.Coordinator, v.CoordinatorHealth)
	if v.Replica != "" {
		fmt.Fprintf(tw, "Replica:\t%s at %s\n", v.Replica, v.ReplicaURL)
	}
	if !v.Session.IsZero() {
		fmt.Fprintf(tw, "Session:\tuntil %s (%s)\n", v.Session.Local().Format("Jan 2 15:04"), remaining(v.Session))
	}
	fmt.Fprintf(tw, "Tunnel:\t%s\n", state)
	if v.Connected {
		fmt.Fprintf(tw, "Addresses:\t%s\n", strings.Join(v.Addresses, ", "))
		fmt.Fprintf(tw, "SOCKS5:\t%s\n", v.SOCKS)
	}
	if v.DNS != "" {
		fmt.Fprintf(tw, "Mesh DNS:\t%s\n", v.DNS)
	}
	if v.Error != "" {
		fmt.Fprintf(tw, "Error:\t%s\n", v.Error)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "CLUSTER\tROLES\tCONTEXT")
	for _, c := range v.Clusters {
		var roles []string
		for _, r := range c.Roles {
			s := r.Role
			if r.Expires != nil {
				s += " (until " + r.Expires.Local().Format("15:04") + ")"
			}
			roles = append(roles, s)
		}
		ctx := kubeconfig.ContextName(c.Name)
		if !slices.Contains(v.Contexts, ctx) {
			ctx = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, strings.Join(roles, ","), ctx)
	}
	if len(v.Grants) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "GRANT\tCLUSTER\tEXPIRES")
		for _, gr := range v.Grants {
			fmt.Fprintf(tw, "%s\t%s\t%s (%s)\n", gr.Role, gr.Cluster, gr.Expires.Local().Format("Jan 2 15:04"), remaining(gr.Expires))
		}
	}
	if len(v.Agents) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "AGENT\tCLUSTER\tADDRESS\tONLINE\tPATH\tHANDSHAKE")
		for _, a := range v.Agents {
			hs := "never"
			if !a.LastHandshake.IsZero() {
				hs = humanDuration(now().Sub(a.LastHandshake)) + " ago"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\n", a.NodeID, a.Cluster, a.Address, a.Online, pathText(a), hs)
		}
	}
}

// queryControl asks a running up for its agents and their handshakes.
func queryControl(ctx context.Context, dir string) ([]device.AgentView, error) {
	hc := device.StatusClient(dir, 3*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://up/status", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Agents []device.AgentView `json:"agents"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	return body.Agents, nil
}

// pathText is an agent's path with its latency, e.g. "direct 1.2ms".
func pathText(a device.AgentView) string {
	if a.Path == "" || a.LatencyMS <= 0 {
		return dash(a.Path)
	}
	return fmt.Sprintf("%s %.1fms", a.Path, a.LatencyMS)
}
