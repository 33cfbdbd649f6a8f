package cli

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
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
	var (
		labels      []string
		manifest    bool
		manifestURL string
	)
	add := &cobra.Command{
		Use:   "add <name>",
		Short: "Register a cluster and print its join token",
		Long: `Register a cluster and print its join token, which is shown only once.

With --manifest, print instead the agent's inputs as Kubernetes objects, to
apply next to deploy/agent (which creates the namespace clustral): the
Secret clustral-join-token holding the join token and the ConfigMap
clustral-agent holding the coordinator's URL (and the CA the CLI trusts
for it, if any).`,
		Example: `  clustral clusters add prod --label env=prod
  clustral clusters add staging -o json

  # install an agent in the current kubectl context
  kubectl apply -k deploy/agent
  clustral clusters add prod --manifest | kubectl apply -f -`,
		Args: cobra.ExactArgs(1),
	}
	addOut := outputFlag(add)
	add.Flags().StringSliceVar(&labels, "label", nil, "label key=value (repeatable)")
	add.Flags().BoolVar(&manifest, "manifest", false, "print the join token Secret and coordinator ConfigMap as YAML for kubectl apply -f -")
	add.Flags().StringVar(&manifestURL, "manifest-coordinator-url", "", "coordinator URL the agents use, in the --manifest ConfigMap (default: the URL you logged in to)")
	add.RunE = func(c *cobra.Command, args []string) error {
		if !manifest && manifestURL != "" {
			return usageError{fmt.Errorf("--manifest-coordinator-url needs --manifest")}
		}
		if manifest && c.Flags().Changed("output") {
			return usageError{fmt.Errorf("--manifest prints YAML objects; leave out -o")}
		}
		s, api, err := g.session()
		if err != nil {
			return err
		}
		agentURL := s.Coordinator
		if manifestURL != "" {
			if agentURL, err = normalizeURL(manifestURL); err != nil {
				return usageError{err}
			}
		}
		var ca []byte
		if manifest {
			if ca, err = readCA(s.CAFile); err != nil {
				return err
			}
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
		if err := api.Do(c.Context(), "POST", proto.APIVersion+"/clusters", req, &resp); err != nil {
			return cliErr(err)
		}
		if manifest {
			b, err := agentManifest(resp.Cluster.Name, resp.JoinToken, agentURL, ca)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "Cluster %s registered. The manifest holds its join token, shown only this once.\n", resp.Cluster.Name)
			if _, err := coordinatorURL(agentURL, false); err != nil {
				fmt.Fprintf(g.stderr, "Warning: agents refuse the plain-HTTP coordinator %s; use --manifest-coordinator-url https://..., or set CLUSTRAL_INSECURE=true in the agent DaemonSet on a network you trust.\n", agentURL)
			}
			_, err = g.stdout.Write(b)
			return err
		}
		return render(g.stdout, *addOut, resp, func(tw *tabwriter.Writer) {
			fmt.Fprintf(tw, "Cluster %s registered.\n\n", resp.Cluster.Name)
			fmt.Fprintf(tw, "Join token (shown once, keep it secret):\n  %s\n\n", resp.JoinToken)
			insecure := ""
			if _, err := coordinatorURL(s.Coordinator, false); err != nil {
				insecure = " --insecure" // agents refuse plain HTTP to another machine without it
			}
			fmt.Fprintf(tw, "Run an agent with it:\n  clustral agent --coordinator %s --join-token-file <file>%s\n", s.Coordinator, insecure)
		})
	}
	list := callCmd(g, &cobra.Command{
		Use:     "list",
		Short:   "List clusters and their agents",
		Example: "  clustral clusters list -o json",
		Args:    cobra.NoArgs,
	}, "GET", fixedPath(proto.APIVersion+"/clusters"), printClusters)
	show := callCmd(g, &cobra.Command{Use: "show <name|id>", Short: "Show a cluster and its agents", Example: "  clustral clusters show prod", Args: cobra.ExactArgs(1)},
		"GET", itemPath("clusters"), printCluster)
	label := &cobra.Command{
		Use: "label <name|id> key=value... | key-", Short: "Set (key=value) or remove (key-) cluster labels",
		Example: "  clustral clusters label prod env=prod team=payments\n  clustral clusters label prod team-", Args: cobra.MinimumNArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			_, api, err := g.session()
			if err != nil {
				return err
			}
			var cl proto.Cluster
			if err := api.Do(c.Context(), "GET", apiPath("clusters", args[0]), nil, &cl); err != nil {
				return cliErr(err)
			}
			labels := map[string]string{}
			for k, v := range cl.Labels {
				labels[k] = v
			}
			for _, l := range args[1:] {
				if k, ok := strings.CutSuffix(l, "-"); ok && !strings.Contains(l, "=") {
					delete(labels, k)
					continue
				}
				k, v, ok := strings.Cut(l, "=")
				if !ok || k == "" {
					return usageError{fmt.Errorf("label %q: use key=value to set or key- to remove", l)}
				}
				labels[k] = v
			}
			if err := api.Do(c.Context(), "PUT", apiPath("clusters", args[0], "labels"), proto.ClusterLabels{Labels: labels}, &cl); err != nil {
				return cliErr(err)
			}
			fmt.Fprintf(g.stdout, "Cluster %s labels: %s\n", cl.Name, formatLabels(cl.Labels))
			return nil
		},
	}
	tokenCmd := func(action, short, example string) *cobra.Command {
		return callCmd(g, &cobra.Command{Use: action + " <name|id>", Short: short, Example: example, Args: cobra.ExactArgs(1)},
			"POST", itemPath("clusters", action), printJoinToken)
	}
	del := deleteCmd(g, &cobra.Command{
		Use: "delete <name|id>", Short: "Delete a cluster, its agents and its assignments", Example: "  clustral clusters delete old-cluster", Args: cobra.ExactArgs(1),
	}, "clusters", "Cluster")
	c.AddCommand(add, list, show, label,
		tokenCmd("rotate-token", "Issue a new join token (the old one stops working)", "  clustral clusters rotate-token prod"),
		tokenCmd("revoke-token", "Revoke the join token and remove every agent of the cluster", "  clustral clusters revoke-token prod"),
		del)
	return c
}

func printClusters(tw *tabwriter.Writer, cs []proto.Cluster) {
	fmt.Fprintln(tw, "NAME\tAGENTS\tONLINE\tLABELS")
	for _, c := range cs {
		on := 0
		for _, a := range c.Agents {
			if a.Online {
				on++
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", c.Name, len(c.Agents), on, formatLabels(c.Labels))
	}
}

func printCluster(tw *tabwriter.Writer, cl proto.Cluster) {
	fmt.Fprintf(tw, "Name:\t%s\nID:\t%s\nLabels:\t%s\n\n", cl.Name, cl.ID, formatLabels(cl.Labels))
	fmt.Fprintln(tw, "AGENT\tHOSTNAME\tADDRESS\tONLINE\tVERSION\tREADY\tLIVE")
	for _, a := range cl.Agents {
		version, ready := "-", "-"
		if a.Status != nil {
			version, ready = a.Status.Version, strconv.FormatBool(a.Status.Ready)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\t%d\n", a.NodeID, a.Hostname, firstAddr(a.Addresses), a.Online, version, ready, a.Streams)
	}
}

// firstAddr is the address of a node's first overlay prefix, or "".
func firstAddr(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return ""
	}
	return ps[0].Addr().String()
}

func printJoinToken(tw *tabwriter.Writer, jt proto.JoinToken) {
	if jt.JoinToken == "" {
		fmt.Fprintf(tw, "Join token of %s revoked; its agents left the mesh.\n", jt.Cluster)
		return
	}
	fmt.Fprintf(tw, "New join token for %s (shown once):\n  %s\nAgents already joined keep working; update the Secret for new ones.\n", jt.Cluster, jt.JoinToken)
}

func formatLabels(l map[string]string) string {
	var ls []string
	for k, v := range l {
		ls = append(ls, k+"="+v)
	}
	slices.Sort(ls)
	return strings.Join(ls, ",")
}

// roleFlags are the flags shared by roles create and roles update.
type roleFlags struct {
	r                                                                        proto.Role
	namespaces, apiGroups, resources, verbs, names, nonResourceURLs, windows []string
}

func (f *roleFlags) add(c *cobra.Command) {
	fl := c.Flags()
	fl.StringSliceVar(&f.r.Groups, "group", nil, "Kubernetes group to impersonate (repeatable)")
	fl.StringVar(&f.r.Description, "description", "", "what the role is for")
	fl.StringVar(&f.r.KubeUser, "kube-user", "", "impersonate this Kubernetes user instead of the user's login")
	fl.StringSliceVar(&f.r.ApproverGroups, "approver-group", nil, "OIDC group whose members may approve requests for this role")
	fl.BoolVar(&f.r.Admin, "admin", false, "holders of this role are clustral administrators")
	fl.StringVar((*string)(&f.r.Recording), "recording", "", "record the exec and attach sessions this role allows: off, best-effort, or required (refuse a session that cannot be recorded)")
	fl.BoolVar(&f.r.RecordStdin, "record-stdin", false, "also record what the user types (off by default: stdin carries passwords)")
	fl.StringSliceVar(&f.namespaces, "namespace", nil, "restrict to these namespaces (\"\" allows cluster-scoped requests)")
	fl.StringSliceVar(&f.apiGroups, "api-group", nil, "restrict to these API groups (\"\" is the core group)")
	fl.StringSliceVar(&f.resources, "resource", nil, "restrict to these resources, e.g. pods, pods/log, deployments; * excludes exec, attach, portforward, proxy, ephemeralcontainers and serviceaccounts/token, which must be named (pods/exec, */exec)")
	fl.StringSliceVar(&f.verbs, "verb", nil, "restrict to these verbs: get, list, watch, create, update, patch, delete, deletecollection")
	fl.StringSliceVar(&f.names, "resource-name", nil, "restrict to these resource names")
	fl.StringSliceVar(&f.nonResourceURLs, "non-resource-url", nil, "allow these non-resource URLs besides discovery, e.g. /metrics, /logs/* (a role with limits allows none otherwise)")
	fl.StringArrayVar(&f.windows, "window", nil, `only during this window, e.g. "mon-fri 09:00-18:00 Europe/Berlin" (repeatable)`)
}

func (f *roleFlags) role(name string) (proto.Role, error) {
	r := f.r
	r.Name = name
	if err := r.Recording.Validate(); err != nil {
		return r, usageError{err}
	}
	res := proto.Restrictions{Namespaces: f.namespaces, APIGroups: f.apiGroups, Resources: f.resources, Verbs: f.verbs, ResourceNames: f.names,
		NonResourceURLs: f.nonResourceURLs}
	for _, w := range f.windows {
		tw, err := parseWindow(w)
		if err != nil {
			return r, usageError{err}
		}
		res.TimeWindows = append(res.TimeWindows, tw)
	}
	if len(res.Namespaces)+len(res.APIGroups)+len(res.Resources)+len(res.Verbs)+len(res.ResourceNames)+len(res.NonResourceURLs)+len(res.TimeWindows) > 0 {
		if err := res.Validate(); err != nil {
			return r, usageError{err}
		}
		r.Restrictions = &res
	}
	return r, nil
}

func printRole(tw *tabwriter.Writer, r proto.Role) {
	fmt.Fprintf(tw, "Name:\t%s\n", r.Name)
	fmt.Fprintf(tw, "ID:\t%s\n", r.ID)
	if r.Description != "" {
		fmt.Fprintf(tw, "Description:\t%s\n", r.Description)
	}
	fmt.Fprintf(tw, "Groups:\t%s\n", strings.Join(r.Groups, ", "))
	if r.KubeUser != "" {
		fmt.Fprintf(tw, "Kubernetes user:\t%s\n", r.KubeUser)
	}
	if len(r.ApproverGroups) > 0 {
		fmt.Fprintf(tw, "Approvers:\t%s\n", strings.Join(r.ApproverGroups, ", "))
	}
	if r.Admin {
		fmt.Fprintf(tw, "Admin:\tyes\n")
	}
	if r.Recording.Rank() > 0 {
		stdin := "without stdin"
		if r.RecordStdin {
			stdin = "with stdin"
		}
		fmt.Fprintf(tw, "Recording:\t%s, %s\n", r.Recording, stdin)
	}
	for _, l := range r.Restrictions.Limits() {
		fmt.Fprintf(tw, "%s:\t%s\n", l.Name, l.Value)
	}
}

func printRoles(tw *tabwriter.Writer, rs []proto.Role) {
	fmt.Fprintln(tw, "NAME\tGROUPS\tLIMITS\tDESCRIPTION")
	for _, r := range rs {
		limits := "-"
		if r.Restrictions != nil {
			limits = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Name, strings.Join(r.Groups, ","), limits, r.Description)
	}
}

func newRolesCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "roles",
		Short: "Manage roles (administrators)",
		Example: `  clustral roles create viewer --group clustral:view
  clustral roles list`,
	}
	var cf roleFlags
	create := &cobra.Command{
		Use:   "create <name>",
		Short: "Create a role: the Kubernetes groups impersonated for its holders, and optional limits",
		Example: `  clustral roles create viewer --group clustral:view --description "read-only"
  clustral roles create dev-deployer --group clustral:edit --namespace dev --resource deployments --verb get,list,patch
  clustral roles create dev-shell --group clustral:edit --namespace dev --resource '*,pods/exec,pods/portforward'
  clustral roles create office-hours --group clustral:edit --window "mon-fri 09:00-18:00 Europe/Berlin" --approver-group sre`,
		Args: cobra.ExactArgs(1),
	}
	createOut := outputFlag(create)
	cf.add(create)
	create.RunE = func(c *cobra.Command, args []string) error {
		r, err := cf.role(args[0])
		if err != nil {
			return err
		}
		return renderCall(c.Context(), g, *createOut, "POST", proto.APIVersion+"/roles", r, printRole)
	}

	var uf roleFlags
	update := &cobra.Command{
		Use:     "update <name|id>",
		Short:   "Replace a role's settings (holders' access changes at once)",
		Example: `  clustral roles update viewer --group clustral:view --namespace dev,staging`,
		Args:    cobra.ExactArgs(1),
	}
	updateOut := outputFlag(update)
	var rename string
	update.Flags().StringVar(&rename, "rename", "", "new name")
	uf.add(update)
	update.RunE = func(c *cobra.Command, args []string) error {
		r, err := uf.role(rename)
		if err != nil {
			return err
		}
		return renderCall(c.Context(), g, *updateOut, "PUT", apiPath("roles", args[0]), r, printRole)
	}

	show := callCmd(g, &cobra.Command{Use: "show <name|id>", Short: "Show a role", Example: "  clustral roles show viewer -o yaml", Args: cobra.ExactArgs(1)},
		"GET", itemPath("roles"), printRole)

	del := deleteCmd(g, &cobra.Command{
		Use: "delete <name|id>", Short: "Delete a role and every assignment of it", Example: "  clustral roles delete old-role", Args: cobra.ExactArgs(1),
	}, "roles", "Role")

	list := callCmd(g, &cobra.Command{Use: "list", Short: "List roles", Example: "  clustral roles list", Args: cobra.NoArgs},
		"GET", fixedPath(proto.APIVersion+"/roles"), printRoles)
	c.AddCommand(create, list, show, update, del)
	return c
}

func newAssignCmd(g *globals) *cobra.Command {
	var (
		a          proto.Assignment
		dur, until string
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
	c.Flags().StringVar(&until, "until", "", "expire at this time (RFC 3339, e.g. 2026-12-01T18:00:00Z)")
	c.Flags().StringToStringVar(&a.ClusterSelector, "selector", nil, "every cluster with these labels, e.g. env=prod")
	c.RunE = func(c *cobra.Command, _ []string) error {
		if a.Role == "" || (a.Cluster == "" && len(a.ClusterSelector) == 0) {
			return usageError{fmt.Errorf("--role and --cluster (or --selector) are required")}
		}
		if dur != "" && until != "" {
			return usageError{fmt.Errorf("pass --for or --until, not both")}
		}
		if until != "" {
			t, err := time.Parse(time.RFC3339, until)
			if err != nil {
				return usageError{fmt.Errorf("--until %q: use RFC 3339, e.g. 2026-12-01T18:00:00Z", until)}
			}
			a.Expires = &t
		}
		if dur != "" {
			d, err := parseDuration(dur)
			if err != nil {
				return usageError{err}
			}
			t := now().Add(d).UTC()
			a.Expires = &t
		}
		return renderCall(c.Context(), g, *out, "POST", proto.APIVersion+"/assignments", a, func(tw *tabwriter.Writer, resp proto.Assignment) {
			who := resp.User
			if who == "" {
				who = "group " + resp.Group
			}
			where := "cluster " + resp.Cluster
			if resp.Cluster == "" {
				where = "clusters matching " + formatLabels(resp.ClusterSelector)
			}
			fmt.Fprintf(tw, "Assigned role %s on %s to %s (id %s).\n", resp.Role, where, who, resp.ID)
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
			if err := g.call(c.Context(), "DELETE", proto.APIVersion+"/assignments/"+args[0], nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "Assignment %s removed.\n", args[0])
			return nil
		},
	}
}

func newUsersCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "users", Short: "List users (administrators)", Example: "  clustral users list"}
	list := callCmd(g, &cobra.Command{Use: "list", Short: "List users", Example: "  clustral users list -o json", Args: cobra.NoArgs},
		"GET", fixedPath(proto.APIVersion+"/users"), func(tw *tabwriter.Writer, us []proto.User) {
			fmt.Fprintln(tw, "LOGIN\tGROUPS\tADMIN\tLAST SEEN")
			for _, u := range us {
				fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", u.Login, strings.Join(u.Groups, ","), u.Admin, u.LastSeen.Local().Format(time.DateTime))
			}
		})
	show := callCmd(g, &cobra.Command{Use: "show <login|email|id>", Short: "Show a user", Example: "  clustral users show alice@example.com", Args: cobra.ExactArgs(1)},
		"GET", itemPath("users"), func(tw *tabwriter.Writer, u proto.User) {
			fmt.Fprintf(tw, "Login:\t%s\nEmail:\t%s\nName:\t%s\nGroups:\t%s\nAdmin:\t%v\nDisabled:\t%v\nLast seen:\t%s\n",
				u.Login, u.Email, u.Name, strings.Join(u.Groups, ", "), u.Admin, u.Disabled, u.LastSeen.Local().Format(time.DateTime))
		})
	state := func(action, short string) *cobra.Command {
		return &cobra.Command{
			Use: action + " <login|email|id>", Short: short, Example: "  clustral users " + action + " bob@example.com", Args: cobra.ExactArgs(1),
			RunE: func(c *cobra.Command, args []string) error {
				var u proto.User
				if err := g.call(c.Context(), "POST", apiPath("users", args[0], action), nil, &u); err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "User %s %sd.\n", u.Login, action)
				return nil
			},
		}
	}
	c.AddCommand(list, show,
		state("disable", "Disable a user: revokes every session and device at once"),
		state("enable", "Enable a disabled user"))
	return c
}
