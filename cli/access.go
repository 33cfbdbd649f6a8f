package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustral/clustral/proto"
)

func newAccessCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "access",
		Short: "Request, approve, deny and revoke just-in-time access",
		Example: `  clustral access request --cluster prod --role admin --for 1h --reason "INC-1234"
  clustral access list --state pending
  clustral access approve req_0123 --for 30m
  clustral access deny req_0123 --reason "use staging"
  clustral access revoke req_0123`,
	}
	var (
		req      proto.CreateAccessRequest
		forDur   string
		state    string
		decision string
		reason   string
	)
	request := &cobra.Command{
		Use:   "request",
		Short: "Ask for a role on a cluster for a while",
		Example: `  clustral access request --cluster prod --role admin --for 1h --reason "INC-1234: restart the ingress"
  clustral access request --cluster prod --role viewer --for PT8H --reason "on call"`,
		Args: cobra.NoArgs,
	}
	reqOut := outputFlag(request)
	request.Flags().StringVar(&req.Cluster, "cluster", "", "cluster name or id")
	request.Flags().StringVar(&req.Role, "role", "", "role name or id")
	request.Flags().StringVar(&forDur, "for", "1h", "how long (30m, 8h, 1d, PT8H)")
	request.Flags().StringVar(&req.Reason, "reason", "", "why you need it (required)")
	request.RunE = func(c *cobra.Command, _ []string) error {
		if req.Cluster == "" || req.Role == "" || req.Reason == "" {
			return usageError{fmt.Errorf("--cluster, --role and --reason are required")}
		}
		d, err := parseDuration(forDur)
		if err != nil {
			return usageError{err}
		}
		req.Duration = proto.Duration(d)
		return renderCall(c.Context(), g, *reqOut, "POST", proto.APIVersion+"/access-requests", req, func(tw *tabwriter.Writer, ar proto.AccessRequest) {
			fmt.Fprintf(tw, "Requested %s on %s for %s (request %s).\n", ar.Role, ar.Cluster, time.Duration(ar.Duration), ar.ID)
			fmt.Fprintf(tw, "An approver can run: clustral access approve %s\n", ar.ID)
		})
	}

	list := callCmd(g, &cobra.Command{
		Use:   "list",
		Short: "List your requests and those you may decide",
		Example: `  clustral access list
  clustral access list --state pending -o json`,
		Args: cobra.NoArgs,
	}, "GET", queryPath(proto.APIVersion+"/access-requests", "state", &state), printAccessRequests)
	list.Flags().StringVar(&state, "state", "", "only requests in this state: pending, approved, denied, expired, revoked")

	decide := func(action, short, example string) *cobra.Command {
		cmd := &cobra.Command{Use: action + " <request-id>", Short: short, Example: example, Args: cobra.ExactArgs(1)}
		out := outputFlag(cmd)
		cmd.Flags().StringVar(&reason, "reason", "", "a note for the record")
		if action == "approve" {
			cmd.Flags().StringVar(&decision, "for", "", "grant for less time than requested")
		}
		cmd.RunE = func(c *cobra.Command, args []string) error {
			body := proto.AccessDecision{Reason: reason}
			if action == "approve" && decision != "" {
				d, err := parseDuration(decision)
				if err != nil {
					return usageError{err}
				}
				body.Duration = proto.Duration(d)
			}
			return renderCall(c.Context(), g, *out, "POST", apiPath("access-requests", args[0], action), body, func(tw *tabwriter.Writer, ar proto.AccessRequest) {
				fmt.Fprintf(tw, "Request %s (%s on %s for %s) is now %s.\n", ar.ID, ar.Role, ar.Cluster, ar.User, ar.State)
				if ar.GrantExpires != nil && ar.State == proto.RequestApproved {
					fmt.Fprintf(tw, "The grant ends at %s.\n", ar.GrantExpires.Local().Format("Jan 2 15:04"))
				}
			})
		}
		return cmd
	}
	c.AddCommand(request, list,
		decide("approve", "Approve a request (optionally for less time)", "  clustral access approve req_0123\n  clustral access approve req_0123 --for 30m --reason ok"),
		decide("deny", "Deny a request, with a reason", `  clustral access deny req_0123 --reason "use staging"`),
		decide("revoke", "End an active grant, or withdraw a pending request", "  clustral access revoke req_0123"),
	)
	return c
}

func printAccessRequests(tw *tabwriter.Writer, ars []proto.AccessRequest) {
	fmt.Fprintln(tw, "ID\tUSER\tROLE\tCLUSTER\tFOR\tSTATE\tUNTIL\tREASON")
	for _, a := range ars {
		until := ""
		switch {
		case a.State == proto.RequestPending:
			until = a.PendingUntil.Local().Format("Jan 2 15:04")
		case a.GrantExpires != nil:
			until = a.GrantExpires.Local().Format("Jan 2 15:04")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.User, a.Role, a.Cluster, time.Duration(a.Duration), a.State, until, a.Reason)
	}
}

func newDevicesCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "devices", Short: "List and revoke devices", Example: "  clustral devices list\n  clustral devices revoke dev_0123"}
	var userFilter string
	list := callCmd(g, &cobra.Command{Use: "list", Short: "List your devices (administrators: every device)", Example: "  clustral devices list --user alice@example.com", Args: cobra.NoArgs},
		"GET", queryPath(proto.APIVersion+"/devices", "user", &userFilter), func(tw *tabwriter.Writer, ds []proto.Device) {
			fmt.Fprintln(tw, "ID\tUSER\tHOSTNAME\tADDRESS\tONLINE\tEXPIRES")
			for _, d := range ds {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\n", d.ID, d.User, d.Hostname, firstAddr(d.Addresses), d.Online, d.Expires.Local().Format("Jan 2 15:04"))
			}
		})
	list.Flags().StringVar(&userFilter, "user", "", "only this user's devices (administrators)")
	revoke := &cobra.Command{
		Use: "revoke <device-id|hostname>", Short: "Remove a device from the mesh at once",
		Example: "  clustral devices revoke dev_0123\n  clustral devices revoke old-laptop", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			_, api, err := g.session()
			if err != nil {
				return err
			}
			id := args[0]
			if !strings.HasPrefix(id, "dev_") {
				var ds []proto.Device
				if err := api.Do(c.Context(), "GET", proto.APIVersion+"/devices", nil, &ds); err != nil {
					return cliErr(err)
				}
				var match []string
				for _, d := range ds {
					if d.Hostname == id {
						match = append(match, d.ID)
					}
				}
				switch len(match) {
				case 0:
					return withHint(exitError, fmt.Errorf("no device named %q", id), "list them with clustral devices list")
				case 1:
					id = match[0]
				default:
					return withHint(exitUsage, fmt.Errorf("%d devices are named %q", len(match), id), "pass the id: "+strings.Join(match, ", "))
				}
			}
			if err := api.Do(c.Context(), "DELETE", apiPath("devices", id), nil, nil); err != nil {
				return cliErr(err)
			}
			fmt.Fprintf(g.stdout, "Device %s revoked.\n", id)
			return nil
		},
	}
	c.AddCommand(list, revoke)
	return c
}
