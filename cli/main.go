// Package cli is the clustral command line: the user commands (login, up,
// down, status, ...) and the server commands (clustral coordinator,
// clustral agent). The binary is cli/clustral, which calls Main.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	_ "time/tzdata" // time windows name zones; distroless images have no zoneinfo

	"github.com/spf13/cobra"

	"github.com/clustral/clustral/pkg/coordclient"
)

// Main runs the clustral command line with the process's arguments and
// standard streams, stops on SIGINT or SIGTERM, and returns the exit code
// (documented in README.md) for the caller to pass to os.Exit.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
}

// Exit codes, documented in README.md.
const (
	exitOK      = 0
	exitError   = 1
	exitUsage   = 2
	exitAuth    = 3 // not logged in or session expired
	exitDenied  = 4 // the coordinator or cluster refused
	exitUnreach = 5 // the coordinator or tunnel is unreachable
)

// hintError carries an exit code and a hint line through cobra to run,
// which prints the hint under the error and exits with the code. withHint
// makes one; cliErr makes one from a coordinator problem.
type hintError struct {
	err  error
	hint string
	code int
}

func (e *hintError) Error() string { return e.err.Error() }
func (e *hintError) Unwrap() error { return e.err }

// withHint wraps err with a hint line and an exit code.
func withHint(code int, err error, hint string) error {
	return &hintError{err: err, hint: hint, code: code}
}

// run executes the CLI with args and returns the process exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRootCmd(stdin, stdout, stderr)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	noColor, _ := root.PersistentFlags().GetBool("no-color")
	color := style{on: colorEnabled(stderr, noColor)}
	fmt.Fprintln(stderr, color.red("error: "+oneLine(err.Error())))
	if code, ok := offerLogin(ctx, root, cmd, err, args, stdin, stdout, stderr); ok {
		return code
	}
	var ce *hintError
	if !errors.As(err, &ce) && errors.Is(err, coordclient.ErrUnreachable) {
		ce = unreachable(err).(*hintError)
	}
	if ce != nil {
		if ce.hint != "" {
			fmt.Fprintln(stderr, color.dim("hint: "+ce.hint))
		}
		return ce.code
	}
	if isUsageError(err) {
		return exitUsage
	}
	return exitError
}

type usageError struct{ error }

func isUsageError(err error) bool {
	var u usageError
	return errors.As(err, &u)
}

func newRootCmd(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "clustral",
		Short: "kubectl access to many Kubernetes clusters over a WireGuard mesh",
		Long: `clustral gives you kubectl access to every Kubernetes cluster you are allowed
to reach, over a WireGuard overlay mesh, with identity from your company's
OIDC provider.

  clustral login https://clustral.example.com
  clustral up
  kubectl --context clustral-prod get pods`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
	})
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root.PersistentFlags().StringVar(&g.profile, "profile", "", "profile to use (default: env CLUSTRAL_PROFILE, else the current profile)")
	root.PersistentFlags().BoolVar(&g.debug, "debug", false, "show HTTP traces and timings (never secrets)")
	root.PersistentFlags().BoolVar(&g.noColor, "no-color", false, "no colour or animation (also: env NO_COLOR); both only ever appear on a terminal")
	root.CompletionOptions.DisableDefaultCmd = true // newCompletionCmd replaces it
	root.AddCommand(
		newVersionCmd(g),
		newLoginCmd(g),
		newLogoutCmd(g),
		newCoordinatorCmd(g),
		newAgentCmd(g),
		newUpCmd(g),
		newDownCmd(g),
		newStatusCmd(g),
		newClustersCmd(g),
		newRolesCmd(g),
		newAssignCmd(g),
		newUnassignCmd(g),
		newUsersCmd(g),
		newAccessCmd(g),
		newDevicesCmd(g),
		newAuditCmd(g),
		newSessionsCmd(g),
		newWhoamiCmd(g),
		newKubeCmd(g),
		newConfigCmd(g),
		newProfilesCmd(g),
		newAccountsCmd(g),
		newDoctorCmd(g),
		newUICmd(g),
		newCompletionCmd(root),
	)
	return root
}

// globals holds the flags and streams every command shares.
type globals struct {
	profile string
	debug   bool
	noColor bool
	stdin   io.Reader
	stdout  io.Writer
	stderr  io.Writer
}

// logger returns the CLI's logger: debug output on stderr with --debug,
// nothing otherwise.
func (g *globals) logger() *slog.Logger {
	if !g.debug {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (g *globals) dir() (string, error) {
	p, err := g.profileName()
	if err != nil {
		return "", err
	}
	return profileDir(p)
}

// session loads the stored session and an API client that uses it.
func (g *globals) session() (*storedSession, *coordclient.Client, error) {
	dir, err := g.dir()
	if err != nil {
		return nil, nil, err
	}
	s, err := loadSession(dir)
	if err != nil {
		return nil, nil, err
	}
	var dbg *slog.Logger
	if g.debug {
		dbg = g.logger()
	}
	hc, err := newHTTPClient(s.CAFile, dbg)
	if err != nil {
		return nil, nil, err
	}
	return s, coordclient.New(s.Coordinator, s.Session.Token, hc), nil
}
