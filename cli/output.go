package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// outputFlag adds -o/--output to c and returns where it is stored.
func outputFlag(c *cobra.Command) *string {
	var o string
	c.Flags().StringVarP(&o, "output", "o", "table", "output format: table, json or yaml")
	return &o
}

// render writes v as JSON or YAML, or calls table for the table format.
func render(w io.Writer, format string, v any, table func(tw *tabwriter.Writer)) error {
	switch format {
	case "json":
		e := json.NewEncoder(w)
		e.SetIndent("", "  ")
		return e.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case "table", "":
		// tabwriter pads every cell but the last, so a row whose last
		// cell is empty would end in spaces: they are trimmed.
		var buf bytes.Buffer
		tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
		table(tw)
		if err := tw.Flush(); err != nil {
			return err
		}
		out := make([]byte, 0, buf.Len())
		for line := range bytes.Lines(buf.Bytes()) {
			nl := bytes.HasSuffix(line, []byte("\n"))
			out = append(out, bytes.TrimRight(line, " \n")...)
			if nl {
				out = append(out, '\n')
			}
		}
		_, err := w.Write(out)
		return err
	default:
		return usageError{fmt.Errorf("unknown output format %q (use table, json or yaml)", format)}
	}
}

// valueCmd gives cmd the -o flag and a RunE that prints the string get
// returns: alone on a line in the table format, and as the one field key
// of an object in JSON and YAML.
func valueCmd(g *globals, cmd *cobra.Command, key string, get func() (string, error)) *cobra.Command {
	out := outputFlag(cmd)
	cmd.RunE = func(*cobra.Command, []string) error {
		v, err := get()
		if err != nil {
			return err
		}
		return render(g.stdout, *out, map[string]string{key: v}, func(tw *tabwriter.Writer) { fmt.Fprintln(tw, v) })
	}
	return cmd
}

// viewCmd gives cmd the -o flag and a RunE that builds a view from the
// profile's directory and renders it: as JSON or YAML, or as the table
// table writes.
func viewCmd[V any](g *globals, cmd *cobra.Command, build func(c *cobra.Command, dir string) (V, error), table func(tw *tabwriter.Writer, v V)) *cobra.Command {
	out := outputFlag(cmd)
	cmd.RunE = func(c *cobra.Command, _ []string) error {
		dir, err := g.dir()
		if err != nil {
			return err
		}
		v, err := build(c, dir)
		if err != nil {
			return err
		}
		return render(g.stdout, *out, v, func(tw *tabwriter.Writer) { table(tw, v) })
	}
	return cmd
}
