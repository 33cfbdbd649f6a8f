package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustral/clustral/proto"
)

func newClustersCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "clusters",
		Short: "Manage clusters (administrators)",
		Example: `  clustral clusters add prod
  clustral clusters list`,
	}
	var labels []string
	add := &cobra.Command{
		Use:   "add <name>",
		Short: "Register a cluster and print its join token",
		Example: `  clustral clusters add prod --label env=prod
  clustral clusters add staging -o json`,
		Args: cobra.ExactArgs(1),
	}
	addOut := outputFlag(add)
	add.Flags().StringSliceVar(&labels, "label", nil, "label key=value (repeatable)")
	add.RunE = func(c *cobra.Command, args []string) error {
		s, api, err := g.session()
		if err != nil {
			return err
		}
		req := proto.CreateClusterRequest{Name: args[0], Labels: map[string]string{}}
		for _, l := range labels {
			k, v, ok := strings.Cut(l, "=")
			if !ok || k == "" {
				return usageError{fmt.Errorf("label %q: use key=value", l)}
			}
			req.Labels[k] = v
		}
		var resp proto.CreateClusterResponse
		if err := api.do(c.Context(), "POST", proto.APIVersion+"/clusters", req, &resp); err != nil {
			return cliErr(err)
		}
		return render(g.stdout, *addOut, resp, func(tw *tabwriter.Writer) {
			fmt.Fprintf(tw, "Cluster %s registered.\n\n", resp.Cluster.Name)
			fmt.Fprintf(tw, "Join token (shown once, keep it secret):\n  %s\n\n", resp.JoinToken)
			fmt.Fprintf(tw, "Run an agent with it:\n  clustral agent --coordinator %s --join-token-file <file>\n", s.Coordinator)
		})
	}
	list := &cobra.Command{
		Use:     "list",
		Short:   "List clusters and their agents",
		Example: "  clustral clusters list -o json",
		Args:    cobra.NoArgs,
	}
	listOut := outputFlag(list)
	list.RunE = func(c *cobra.Command, _ []string) error {
		_, api, err := g.session()
		if err != nil {
			return err
		}
		var cs []proto.Cluster
		if err := api.do(c.Context(), "GET", proto.APIVersion+"/clusters", nil, &cs); err != nil {
			return cliErr(err)
		}
		return render(g.stdout, *listOut, cs, func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "NAME\tAGENTS\tONLINE\tLABELS")
			for _, c := range cs {
				on := 0
				for _, a := range c.Agents {
					if a.Online {
						on++
					}
				}
				var ls []string
				for k, v := range c.Labels {
					ls = append(ls, k+"="+v)
				}
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", c.Name, len(c.Agents), on, strings.Join(ls, ","))
			}
		})
	}
	c.AddCommand(add, list)
	return c
}

func newRolesCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "roles",
		Short: "Manage roles (administrators)",
		Example: `  clustral roles create viewer --group clustral:view
  clustral roles list`,
	}
	var r proto.Role
	create := &cobra.Command{
		Use:   "create <name>",
		Short: "Create a role: the Kubernetes groups impersonated for its holders",
		Example: `  clustral roles create viewer --group clustral:view --description "read-only"
  clustral roles create breakglass --group system:masters`,
		Args: cobra.ExactArgs(1),
	}
	createOut := outputFlag(create)
	create.Flags().StringSliceVar(&r.Groups, "group", nil, "Kubernetes group to impersonate (repeatable)")
	create.Flags().StringVar(&r.Description, "description", "", "what the role is for")
	create.Flags().StringVar(&r.KubeUser, "kube-user", "", "impersonate this Kubernetes user instead of the user's login")
	create.RunE = func(c *cobra.Command, args []string) error {
		_, api, err := g.session()
		if err != nil {
			return err
		}
		r.Name = args[0]
		var out proto.Role
		if err := api.do(c.Context(), "POST", proto.APIVersion+"/roles", r, &out); err != nil {
			return cliErr(err)
		}
		return render(g.stdout, *createOut, out, func(tw *tabwriter.Writer) {
			fmt.Fprintf(tw, "Role %s created (groups: %s).\n", out.Name, strings.Join(out.Groups, ", "))
		})
	}
	list := &cobra.Command{Use: "list", Short: "List roles", Example: "  clustral roles list", Args: cobra.NoArgs}
	listOut := outputFlag(list)
	list.RunE = func(c *cobra.Command, _ []string) error {
		_, api, err := g.session()
		if err != nil {
			return err
		}
		var rs []proto.Role
		if err := api.do(c.Context(), "GET", proto.APIVersion+"/roles", nil, &rs); err != nil {
			return cliErr(err)
		}
		return render(g.stdout, *listOut, rs, func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "NAME\tGROUPS\tDESCRIPTION")
			for _, r := range rs {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Name, strings.Join(r.Groups, ","), r.Description)
			}
		})
	}
	c.AddCommand(create, list)
	return c
}

func newAssignCmd(g *globals) *cobra.Command {
	var (
		a   proto.Assignment
		dur string
	)
	c := &cobra.Command{
		Use:   "assign",
		Short: "Give a user or an OIDC group a role on a cluster (administrators)",
		Example: `  clustral assign --user alice@example.com --role viewer --cluster prod
  clustral assign --group sre --role admin --cluster prod --for 8h`,
		Args: cobra.NoArgs,
	}
	out := outputFlag(c)
	c.Flags().StringVar(&a.User, "user", "", "user login, email or id")
	c.Flags().StringVar(&a.Group, "group", "", "OIDC group")
	c.Flags().StringVar(&a.Role, "role", "", "role name or id")
	c.Flags().StringVar(&a.Cluster, "cluster", "", "cluster name or id")
	c.Flags().StringVar(&dur, "for", "", "expire after this long (30m, 8h, 1d, P1D)")
	c.RunE = func(c *cobra.Command, _ []string) error {
		if a.Role == "" || a.Cluster == "" {
			return usageError{fmt.Errorf("--role and --cluster are required")}
		}
		if dur != "" {
			d, err := parseDuration(dur)
			if err != nil {
				return usageError{err}
			}
			t := time.Now().Add(d).UTC()
			a.Expires = &t
		}
		_, api, err := g.session()
		if err != nil {
			return err
		}
		var resp proto.Assignment
		if err := api.do(c.Context(), "POST", proto.APIVersion+"/assignments", a, &resp); err != nil {
			return cliErr(err)
		}
		return render(g.stdout, *out, resp, func(tw *tabwriter.Writer) {
			who := resp.User
			if who == "" {
				who = "group " + resp.Group
			}
			fmt.Fprintf(tw, "Assigned role %s on cluster %s to %s (id %s).\n", resp.Role, resp.Cluster, who, resp.ID)
		})
	}
	return c
}

func newUnassignCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "unassign <assignment-id>",
		Short:   "Remove an assignment (administrators)",
		Example: "  clustral unassign asg_0123456789abcdef0123",
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			_, api, err := g.session()
			if err != nil {
				return err
			}
			if err := api.do(c.Context(), "DELETE", proto.APIVersion+"/assignments/"+args[0], nil, nil); err != nil {
				return cliErr(err)
			}
			fmt.Fprintf(g.stdout, "Assignment %s removed.\n", args[0])
			return nil
		},
	}
}

func newUsersCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "users", Short: "List users (administrators)", Example: "  clustral users list"}
	list := &cobra.Command{Use: "list", Short: "List users", Example: "  clustral users list -o json", Args: cobra.NoArgs}
	out := outputFlag(list)
	list.RunE = func(c *cobra.Command, _ []string) error {
		_, api, err := g.session()
		if err != nil {
			return err
		}
		var us []proto.User
		if err := api.do(c.Context(), "GET", proto.APIVersion+"/users", nil, &us); err != nil {
			return cliErr(err)
		}
		return render(g.stdout, *out, us, func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "LOGIN\tGROUPS\tADMIN\tLAST SEEN")
			for _, u := range us {
				fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", u.Login, strings.Join(u.Groups, ","), u.Admin, u.LastSeen.Local().Format(time.DateTime))
			}
		})
	}
	c.AddCommand(list)
	return c
}
