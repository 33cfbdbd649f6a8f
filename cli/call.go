package cli

import (
	"context"
	"fmt"
	"net/url"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/clustral/clustral/proto"
)

// call sends one request to the coordinator with the stored session and
// decodes the answer into out (coordclient.Client.Do). A coordinator
// problem comes back through cliErr, with its hint and exit code.
func (g *globals) call(ctx context.Context, method, path string, body, out any) error {
	_, api, err := g.session()
	if err != nil {
		return err
	}
	if err := api.Do(ctx, method, path, body, out); err != nil {
		return cliErr(err)
	}
	return nil
}

// renderCall sends one request with g.call and writes the answer, a T,
// to g.stdout in format; table draws it for the table format.
func renderCall[T any](ctx context.Context, g *globals, format, method, path string, body any, table func(*tabwriter.Writer, T)) error {
	var v T
	if err := g.call(ctx, method, path, body, &v); err != nil {
		return err
	}
	return render(g.stdout, format, v, func(tw *tabwriter.Writer) { table(tw, v) })
}

// callCmd gives cmd the -o flag and a RunE that sends method, without a
// body, to the path for its arguments, and renders the answer, a T, with
// table. path is called when the command runs, so it may read flags.
func callCmd[T any](g *globals, cmd *cobra.Command, method string, path func(args []string) string, table func(*tabwriter.Writer, T)) *cobra.Command {
	out := outputFlag(cmd)
	cmd.RunE = func(c *cobra.Command, args []string) error {
		return renderCall(c.Context(), g, *out, method, path(args), nil, table)
	}
	return cmd
}

// deleteCmd gives cmd a RunE that deletes the object its argument names
// in collection and says so: "<kind> <argument> deleted.".
func deleteCmd(g *globals, cmd *cobra.Command, collection, kind string) *cobra.Command {
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if err := g.call(c.Context(), "DELETE", apiPath(collection, args[0]), nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(g.stdout, "%s %s deleted.\n", kind, args[0])
		return nil
	}
	return cmd
}

// apiPath is the API path of the object id in collection, followed by the
// path elements sub: apiPath("clusters", "prod", "labels") is
// /api/v1/clusters/prod/labels. Only id is escaped.
func apiPath(collection, id string, sub ...string) string {
	p := proto.APIVersion + "/" + collection + "/" + url.PathEscape(id)
	for _, s := range sub {
		p += "/" + s
	}
	return p
}

// fixedPath is a callCmd path that does not depend on the arguments.
func fixedPath(p string) func([]string) string {
	return func([]string) string { return p }
}

// itemPath is a callCmd path: apiPath of the first argument in collection,
// followed by sub.
func itemPath(collection string, sub ...string) func([]string) string {
	return func(args []string) string { return apiPath(collection, args[0], sub...) }
}

// queryPath is a callCmd path: p, with the query parameter name set to
// *value when that is not empty.
func queryPath(p, name string, value *string) func([]string) string {
	return func([]string) string {
		if *value == "" {
			return p
		}
		return p + "?" + name + "=" + url.QueryEscape(*value)
	}
}
