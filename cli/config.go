package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/clustral/clustral/cli/device"
	"github.com/clustral/clustral/cli/kubeconfig"
	"github.com/spf13/cobra"
)

func newConfigCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "config",
		Short: "Show, locate or reset clustral's files",
		Example: `  clustral config show
  clustral config path
  clustral config clean --dry-run`,
	}
	c.AddCommand(newConfigShowCmd(g), newConfigPathCmd(g), newConfigCleanCmd(g))
	return c
}

// configView is the output of clustral config show. Its JSON names are
// stable. It never holds a secret.
type configView struct {
	Profile        string     `json:"profile"`
	Dir            string     `json:"dir"`
	Coordinator    string     `json:"coordinator,omitempty"`
	CAFile         string     `json:"ca_file,omitempty"`
	User           string     `json:"user,omitempty"`
	SessionExpires time.Time  `json:"session_expires,omitzero"`
	Accounts       int        `json:"accounts"`
	Tunnel         string     `json:"tunnel"`
	Kubeconfig     string     `json:"kubeconfig"`
	CurrentContext string     `json:"current_context,omitempty"`
	Excluded       []string   `json:"excluded_clusters,omitempty"`
	Files          []fileView `json:"files"`
}

type fileView struct {
	Name string `json:"name"`
	Mode string `json:"mode"`
}

func newConfigShowCmd(g *globals) *cobra.Command {
	return viewCmd(g, &cobra.Command{
		Use:     "show",
		Short:   "Show the profile's files, login (no secrets) and current kubeconfig context",
		Example: "  clustral config show\n  clustral config show -o yaml",
		Args:    cobra.NoArgs,
	}, func(_ *cobra.Command, dir string) (configView, error) {
		profile, err := g.profileName()
		if err != nil {
			return configView{}, err
		}
		v := configView{Profile: profile, Dir: dir, Tunnel: tunnelState(dir), Files: []fileView{}, Excluded: device.Excluded(dir)}
		pc := loadProfileConfig(dir)
		v.Coordinator, v.CAFile = pc.Coordinator, pc.CAFile
		if s, _ := loadSession(dir); s != nil {
			v.Coordinator, v.CAFile, v.User, v.SessionExpires = s.Coordinator, s.CAFile, s.Session.User.Login, s.Session.ExpiresAt
		}
		as, _ := listAccounts(dir)
		v.Accounts = len(as)
		kw := kubeconfig.Writer{}
		if tunnel, _ := device.ReadState(dir); tunnel != nil {
			kw.Path = tunnel.Kubeconfig
		}
		v.Kubeconfig = kw.File()
		if cfg, err := kw.Load(); err == nil {
			v.CurrentContext = cfg.CurrentContext
		}
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return nil
			}
			rel, _ := filepath.Rel(dir, p)
			v.Files = append(v.Files, fileView{Name: rel, Mode: info.Mode().String()})
			return nil
		})
		return v, nil
	}, func(tw *tabwriter.Writer, v configView) {
		fmt.Fprintf(tw, "Profile:\t%s\n", v.Profile)
		fmt.Fprintf(tw, "Directory:\t%s\n", v.Dir)
		fmt.Fprintf(tw, "Coordinator:\t%s\n", dash(v.Coordinator))
		if v.CAFile != "" {
			fmt.Fprintf(tw, "CA file:\t%s\n", v.CAFile)
		}
		if v.User != "" {
			fmt.Fprintf(tw, "Session:\t%s (%s), %d account(s)\n", v.User, remaining(v.SessionExpires), v.Accounts)
		} else {
			fmt.Fprintf(tw, "Session:\tnot logged in\n")
		}
		fmt.Fprintf(tw, "Tunnel:\t%s\n", v.Tunnel)
		fmt.Fprintf(tw, "Kubeconfig:\t%s\n", v.Kubeconfig)
		fmt.Fprintf(tw, "Current context:\t%s\n", dash(v.CurrentContext))
		if len(v.Excluded) > 0 {
			fmt.Fprintf(tw, "Logged out of:\t%s\n", strings.Join(v.Excluded, ", "))
		}
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "FILE\tMODE")
		for _, f := range v.Files {
			fmt.Fprintf(tw, "%s\t%s\n", f.Name, f.Mode)
		}
	})
}

// tunnelState says whether the profile's up runs: "up (pid N)",
// "stopped (pid N is gone)" or "down".
func tunnelState(dir string) string {
	tunnel, alive := device.ReadState(dir)
	switch {
	case alive:
		return fmt.Sprintf("%s (pid %d)", tunnel.Status, tunnel.PID)
	case tunnel != nil:
		return fmt.Sprintf("stopped (pid %d is gone)", tunnel.PID)
	}
	return "down"
}

func newConfigPathCmd(g *globals) *cobra.Command {
	return valueCmd(g, &cobra.Command{
		Use:     "path",
		Short:   "Print the profile's config directory",
		Example: "  clustral config path\n  ls -l \"$(clustral config path)\"",
		Args:    cobra.NoArgs,
	}, "dir", g.dir)
}

func newConfigCleanCmd(g *globals) *cobra.Command {
	var yes, dryRun bool
	c := &cobra.Command{
		Use:   "clean",
		Short: "Factory reset: stop the tunnel, remove clustral's kubeconfig contexts and the profile's files",
		Long: `Stop clustral up, remove the kubeconfig contexts clustral wrote, and delete
the profile's directory: sessions, device key, state and logs. The sessions
are not revoked on the coordinator (clustral logout does that first).

On a terminal clustral asks before deleting; --yes skips the question and is
required when there is no terminal.`,
		Example: `  clustral config clean --dry-run
  clustral config clean
  clustral --profile staging config clean --yes`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			profile, err := g.profileName()
			if err != nil {
				return err
			}
			dir, err := g.dir()
			if err != nil {
				return err
			}
			target := dir
			tunnel, alive := device.ReadState(dir)
			kw := kubeconfig.Writer{}
			if tunnel != nil {
				kw.Path = tunnel.Kubeconfig
			}
			ctxs, _ := kw.Ours()
			if tunnel != nil {
				for _, c := range tunnel.Contexts {
					if !slices.Contains(ctxs, c) {
						ctxs = append(ctxs, c)
					}
				}
			}
			var plan []string
			if alive {
				plan = append(plan, fmt.Sprintf("stop clustral up (pid %d)", tunnel.PID))
			}
			if len(ctxs) > 0 {
				plan = append(plan, fmt.Sprintf("remove kubeconfig contexts %s from %s", strings.Join(ctxs, ", "), kw.File()))
			}
			if _, err := os.Stat(target); err == nil {
				plan = append(plan, "delete "+target)
			}
			if len(plan) == 0 {
				fmt.Fprintf(g.stdout, "Nothing to clean for profile %s.\n", profile)
				return nil
			}
			if dryRun {
				fmt.Fprintln(g.stdout, "Would:")
				for _, p := range plan {
					fmt.Fprintln(g.stdout, "  "+p)
				}
				return nil
			}
			if !yes {
				if !interactive(g.stdin, g.stderr) {
					return withHint(exitUsage, errors.New("config clean deletes your logins and asks first, but there is no terminal to ask on"), "pass --yes to confirm, or --dry-run to see what would go")
				}
				fmt.Fprintln(g.stderr, "This will:")
				for _, p := range plan {
					fmt.Fprintln(g.stderr, "  "+p)
				}
				if !confirm(g.stdin, g.stderr, "Continue?") {
					fmt.Fprintln(g.stdout, "Nothing changed.")
					return nil
				}
			}
			if alive {
				if err := stopUp(g, dir); err != nil {
					return err
				}
			}
			if len(ctxs) > 0 {
				if err := kw.Set(nil, ctxs); err != nil {
					return err
				}
			}
			if err := os.RemoveAll(target); err != nil {
				return fmt.Errorf("delete %s: %w", target, err)
			}
			fmt.Fprintf(g.stdout, "Cleaned: %s.\n", strings.Join(plan, "; "))
			return nil
		},
	}
	c.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	c.Flags().BoolVar(&dryRun, "dry-run", false, "list what would be removed and change nothing")
	return c
}
