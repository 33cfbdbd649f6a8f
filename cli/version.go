package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/clustral/clustral/pkg/version"
)

func newVersionCmd() *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit and Go version",
		Example: `  clustral version
  clustral version -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			v := version.Get()
			switch output {
			case "json":
				e := json.NewEncoder(c.OutOrStdout())
				e.SetIndent("", "  ")
				return e.Encode(v)
			case "", "text", "table":
				_, err := fmt.Fprintln(c.OutOrStdout(), v.String())
				return err
			default:
				return usageError{fmt.Errorf("unknown output format %q (use table or json)", output)}
			}
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "", "output format: table or json")
	return c
}
