package cli

import (
	"context"
	"encoding/json"
	"errors"
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

// setContext asks the running up to add or remove cluster's context and
// returns the contexts it has afterwards.
func setContext(ctx context.Context, dir, cluster string, add bool) ([]string, error) {
	method := "DELETE"
	if add {
		method = "POST"
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://up/contexts/"+cluster, nil)
	if err != nil {
		return nil, err
	}
	resp, err := device.StatusClient(dir, 10*time.Second).Do(req)
	if err != nil {
		return nil, withHint(exitUnreach, fmt.Errorf("ask clustral up: %w", err), "restart it: clustral down && clustral up")
	}
	defer resp.Body.Close()
	var body device.ContextsResponse
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("clustral up answered %s: %w", resp.Status, err)
	}
	if body.Error != "" {
		return nil, fmt.Errorf("clustral up: %s", body.Error)
	}
	return body.Contexts, nil
}

// kubeClusterView is one row of clustral kube ls. Its JSON names are
// stable.
type kubeClusterView struct {
	Cluster string            `json:"cluster"`
	Roles   []proto.RoleGrant `json:"roles"`
	Context string            `json:"context"`
	// State is "active" (the context is in the kubeconfig), "logged-out"
	// (clustral kube logout removed it) or "down" (clustral up is not
	// running).
	State string `json:"state"`
}

func newKubeCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "kube",
		Short: "List the clusters you may reach and add or remove their kubeconfig contexts",
		Example: `  clustral kube ls
  clustral kube logout staging
  clustral kube login staging`,
	}
	c.AddCommand(newKubeLsCmd(g), newKubeLoginCmd(g), newKubeLogoutCmd(g))
	return c
}

func whoami(ctx context.Context, g *globals) (*proto.Whoami, error) {
	var who proto.Whoami
	if err := g.call(ctx, "GET", proto.APIVersion+"/whoami", nil, &who); err != nil {
		return nil, err
	}
	return &who, nil
}

func newKubeLsCmd(g *globals) *cobra.Command {
	return viewCmd(g, &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the clusters you may reach, your roles there and their contexts",
		Example: "  clustral kube ls\n  clustral kube ls -o json",
		Args:    cobra.NoArgs,
	}, func(c *cobra.Command, dir string) ([]kubeClusterView, error) {
		who, err := whoami(c.Context(), g)
		if err != nil {
			return nil, err
		}
		tunnel, alive := device.ReadState(dir)
		excluded := device.Excluded(dir)
		vs := []kubeClusterView{}
		for _, cl := range who.Clusters {
			v := kubeClusterView{Cluster: cl.Name, Roles: cl.Roles, Context: kubeconfig.ContextName(cl.Name), State: "down"}
			switch {
			case slices.Contains(excluded, cl.Name):
				v.State = "logged-out"
			case alive && slices.Contains(tunnel.Contexts, v.Context):
				v.State = "active"
			}
			vs = append(vs, v)
		}
		return vs, nil
	}, func(tw *tabwriter.Writer, vs []kubeClusterView) {
		if len(vs) == 0 {
			fmt.Fprintln(tw, "You may reach no cluster. Ask for access: clustral access request <cluster> --role <role>")
			return
		}
		fmt.Fprintln(tw, "CLUSTER\tROLES\tCONTEXT\tSTATE")
		for _, v := range vs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Cluster, rolesText(v.Roles), v.Context, v.State)
		}
	})
}

// rolesText renders roles as "admin,viewer (until 15:04)".
func rolesText(roles []proto.RoleGrant) string {
	var out []string
	for _, r := range roles {
		s := r.Role
		if r.Expires != nil {
			s += " (until " + r.Expires.Local().Format("15:04") + ")"
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ",")
}

func newKubeLoginCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "login <cluster>",
		Short: "Add one cluster's kubeconfig context (again), leaving the others alone",
		Long: `Add the cluster's context to the kubeconfig through the running clustral up,
undoing a clustral kube logout, or restoring a context that was deleted.
Without a running up, the choice is saved for the next clustral up.`,
		Example: "  clustral kube login prod\n  kubectl --context clustral-prod get pods",
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return kubeSwitch(c.Context(), g, args[0], true)
		},
	}
}

func newKubeLogoutCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "logout <cluster>",
		Short:   "Remove one cluster's kubeconfig context and keep it out until clustral kube login",
		Example: "  clustral kube logout staging",
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return kubeSwitch(c.Context(), g, args[0], false)
		},
	}
}

func kubeSwitch(ctx context.Context, g *globals, cluster string, add bool) error {
	dir, err := g.dir()
	if err != nil {
		return err
	}
	if add {
		who, err := whoami(ctx, g)
		if err != nil {
			return err
		}
		reachable := slices.ContainsFunc(who.Clusters, func(rc proto.ReachableCluster) bool { return rc.Name == cluster })
		if !reachable && !slices.Contains(who.Requestable, cluster) {
			return withHint(exitDenied, fmt.Errorf("there is no cluster %q you may reach or request", cluster), "see: clustral kube ls")
		}
	}
	name := kubeconfig.ContextName(cluster)
	if _, alive := device.ReadState(dir); !alive {
		if err := device.SetExcluded(dir, cluster, !add); err != nil {
			return err
		}
		if add {
			fmt.Fprintf(g.stdout, "clustral up is not running; %s will be written when it starts.\n", name)
		} else {
			fmt.Fprintf(g.stdout, "clustral up is not running; %s will stay out of the kubeconfig until clustral kube login %s.\n", name, cluster)
		}
		return nil
	}
	ctxs, err := setContext(ctx, dir, cluster, add)
	if err != nil {
		return err
	}
	has := slices.Contains(ctxs, name)
	switch {
	case add && has:
		fmt.Fprintf(g.stdout, "Added context %s.\n  kubectl --context %s get pods\n", name, name)
	case add:
		return errors.New("clustral up did not add " + name + "; see clustral status")
	case has:
		return errors.New("clustral up did not remove " + name + "; see clustral status")
	default:
		fmt.Fprintf(g.stdout, "Removed context %s. Bring it back: clustral kube login %s\n", name, cluster)
	}
	return nil
}
