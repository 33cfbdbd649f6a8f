package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustral/clustral/proto"
)

// statusView is the output of clustral status. Its JSON field names are
// stable.
type statusView struct {
	Connected   bool                     `json:"connected"`
	Coordinator string                   `json:"coordinator,omitempty"`
	User        string                   `json:"user,omitempty"`
	Session     time.Time                `json:"session_expires,omitzero"`
	Addresses   []string                 `json:"addresses,omitempty"`
	SOCKS       string                   `json:"socks,omitempty"`
	Kubeconfig  string                   `json:"kubeconfig,omitempty"`
	Clusters    []proto.ReachableCluster `json:"clusters,omitempty"`
	Agents      []agentView              `json:"agents,omitempty"`
	Error       string                   `json:"error,omitempty"`
}

type agentView struct {
	Cluster       string    `json:"cluster"`
	NodeID        string    `json:"node_id"`
	Address       string    `json:"address"`
	Online        bool      `json:"online"`
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	Path          string    `json:"path,omitempty"`
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
		v := statusView{}
		sess, api, serr := g.session()
		if sess != nil {
			v.Coordinator, v.User, v.Session = sess.Coordinator, sess.Session.User.Login, sess.Session.ExpiresAt
		}
		if serr == nil {
			var who proto.Whoami
			if err := api.do(c.Context(), "GET", proto.APIVersion+"/whoami", nil, &who); err != nil {
				v.Error = err.Error()
			} else {
				v.Clusters = who.Clusters
			}
		} else {
			v.Error = serr.Error()
		}
		if st, alive := readUpState(dir); alive {
			v.Connected = st.Status == "connected"
			v.Addresses, v.SOCKS, v.Kubeconfig = st.Addresses, st.SOCKS, st.Kubeconfig
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
	state := "down (run clustral up)"
	if v.Connected {
		state = "connected"
	}
	fmt.Fprintf(tw, "User:\t%s\n", v.User)
	fmt.Fprintf(tw, "Coordinator:\t%s\n", v.Coordinator)
	if !v.Session.IsZero() {
		fmt.Fprintf(tw, "Session:\tuntil %s (%s left)\n", v.Session.Local().Format("Jan 2 15:04"), time.Until(v.Session).Round(time.Minute))
	}
	fmt.Fprintf(tw, "Tunnel:\t%s\n", state)
	if v.Connected {
		fmt.Fprintf(tw, "Addresses:\t%s\n", strings.Join(v.Addresses, ", "))
		fmt.Fprintf(tw, "SOCKS5:\t%s\n", v.SOCKS)
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
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, strings.Join(roles, ","), contextName(c.Name))
	}
	if len(v.Agents) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "AGENT\tCLUSTER\tADDRESS\tONLINE\tHANDSHAKE")
		for _, a := range v.Agents {
			hs := "never"
			if !a.LastHandshake.IsZero() {
				hs = time.Since(a.LastHandshake).Round(time.Second).String() + " ago"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\n", a.NodeID, a.Cluster, a.Address, a.Online, hs)
		}
	}
}

// queryControl asks a running up for its agents and their handshakes.
func queryControl(ctx context.Context, dir string) ([]agentView, error) {
	path := filepath.Join(dir, upSocketFile)
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://up/status", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Agents []agentView `json:"agents"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	return body.Agents, nil
}
