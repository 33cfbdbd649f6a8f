package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/spf13/cobra"
)

// noRelogin names the top-level commands that never offer to log in
// again: they manage logins and files themselves or work without one.
var noRelogin = []string{"login", "logout", "doctor", "config", "profiles", "accounts", "completion", "version", "help", "coordinator", "agent", "down"}

// offerLogin handles an expired or rejected session. On a terminal it asks
// whether to log in again; on yes it runs the login flow for the same
// profile and then the command again, and returns that exit code with ok
// true. Otherwise (no terminal, declined, another error) it returns ok
// false and the caller reports err, which exits with code 3.
func offerLogin(ctx context.Context, root, cmd *cobra.Command, err error, args []string, stdin io.Reader, stdout, stderr io.Writer) (code int, ok bool) {
	var ce *hintError
	if !errors.As(err, &ce) || ce.code != exitAuth || cmd == nil || cmd == root {
		return 0, false
	}
	top := cmd
	for top.HasParent() && top.Parent() != root {
		top = top.Parent()
	}
	if slices.Contains(noRelogin, top.Name()) || !interactive(stdin, stderr) {
		return 0, false
	}
	profile, _ := root.PersistentFlags().GetString("profile")
	g := &globals{profile: profile}
	dir, derr := g.dir()
	if derr != nil {
		return 0, false
	}
	if s, _ := loadSession(dir); s == nil {
		return 0, false // never logged in: login needs a URL
	}
	if !confirm(stdin, stderr, "Your session is no longer valid. Log in again now?") {
		return 0, false
	}
	login := []string{"login"}
	if profile != "" {
		login = append(login, "--profile", profile)
	}
	if c := run(ctx, login, stdin, stdout, stderr); c != exitOK {
		return c, true
	}
	fmt.Fprintln(stderr)
	return run(ctx, args, stdin, stdout, stderr), true
}
