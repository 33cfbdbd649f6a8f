package cli

import (
	"os"

	"github.com/spf13/cobra"
)

// Command returns a new root command with every subcommand, reading the
// process's stdin and writing its stdout and stderr. Release tooling
// generates the shell completions and man pages from it (make release);
// to run clustral, call Main, which also handles signals and exit codes.
func Command() *cobra.Command {
	return newRootCmd(os.Stdin, os.Stdout, os.Stderr)
}
