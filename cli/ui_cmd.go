package cli

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/clustral/clustral/agent/live"
	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustral/clustral/cli/device"
	"github.com/clustral/clustral/cli/kubeconfig"
	"github.com/clustral/clustral/cli/ui"
)

func newUICmd(g *globals) *cobra.Command {
	var (
		listen    string
		noBrowser bool
	)
	c := &cobra.Command{
		Use:   "ui [cluster]",
		Short: "Open the live view of your clusters in a browser (needs clustral up)",
		Long: `Serve a page on this machine (127.0.0.1 only) that shows the clusters
clustral up reaches, live: namespaces, workloads, pods with their status,
restarts and age, events, and a pod's log followed as it grows. Each
cluster's agent sends what you may list and watch there, and nothing else,
over the mesh; nothing goes through the coordinator.

The printed link carries a one-time token that the browser trades for a
cookie; the page stops with this command. Links within the page are deep
links (e.g. /prod/ns/web/pods/api-7c9). The cluster's agent must run with
--live.`,
		Example: `  clustral ui
  clustral ui prod
  clustral ui --no-browser --listen 127.0.0.1:7480`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			ap, err := netip.ParseAddrPort(listen)
			if err != nil || !ap.Addr().IsLoopback() {
				return usageError{fmt.Errorf("--listen %q: give a loopback address and port, e.g. 127.0.0.1:7480 (0 for any free port)", listen)}
			}
			dir, err := g.dir()
			if err != nil {
				return err
			}
			tunnel, alive := device.ReadState(dir)
			if tunnel == nil || !alive {
				return withHint(exitUnreach, errors.New("clustral up is not running"), "run: clustral up")
			}
			clusters, err := uiClusters(tunnel)
			if err != nil {
				return err
			}
			path := "/"
			if len(args) == 1 {
				path = "/" + args[0]
				if !slices.ContainsFunc(clusters, func(c ui.Cluster) bool { return c.Name == args[0] }) {
					return withHint(exitDenied, fmt.Errorf("clustral up does not reach a cluster named %q", args[0]), "see the clusters you may reach: clustral status")
				}
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", listen, err)
			}
			srv, link := ui.New(l.Addr().String(), clusters, g.logger())
			link = strings.Replace(link, "/?token=", path+"?token=", 1)
			fmt.Fprintf(g.stdout, "Live view: %s\n(the link works once; Ctrl-C stops the page)\n", link)
			if !noBrowser {
				if err := openBrowser(link); err != nil {
					fmt.Fprintln(g.stderr, "Open the link above in your browser.")
				}
			}
			return ui.Serve(c.Context(), l, srv)
		},
	}
	f := c.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:0", "loopback address and port of the page (port 0: any free port)")
	f.BoolVar(&noBrowser, "no-browser", false, "print the link only; do not open a browser")
	return c
}

// uiClusters are the clusters of the running clustral up, each reached
// as kubectl reaches it: its kubeconfig context (the mesh CA, the SOCKS
// proxy of clustral up).
func uiClusters(tunnel *device.State) ([]ui.Cluster, error) {
	var out []ui.Cluster
	for _, name := range tunnel.Contexts {
		rules := clientcmd.NewDefaultClientConfigLoadingRules()
		if tunnel.Kubeconfig != "" {
			rules = &clientcmd.ClientConfigLoadingRules{ExplicitPath: tunnel.Kubeconfig}
		}
		cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: name}).ClientConfig()
		if err != nil {
			return nil, withHint(exitError, fmt.Errorf("kubeconfig context %s: %w", name, err), "restore it: clustral kube login "+strings.TrimPrefix(name, kubeconfig.ContextName("")))
		}
		hc, err := live.HTTPClient(cfg)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig context %s: %w", name, err)
		}
		out = append(out, ui.Cluster{Name: strings.TrimPrefix(name, kubeconfig.ContextName("")), Base: strings.TrimSuffix(cfg.Host, "/"), Client: hc})
	}
	return out, nil
}
