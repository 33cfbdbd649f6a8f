package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/clustral/clustral/cli/device"
	"github.com/clustral/clustral/pkg/atomicfile"
	"github.com/spf13/cobra"
)

// Profiles are directories under <config base>/profiles, each with its own
// coordinator and logins. The file current-profile at the base names the
// profile used when neither --profile nor CLUSTRAL_PROFILE says.
const (
	currentProfileFile = "current-profile"
	profileConfigFile  = "profile.json"
	accountsDir        = "sessions"
	defaultProfile     = "default"
)

var profileNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// profileConfig is a profile's settings (profile.json).
type profileConfig struct {
	Coordinator string `json:"coordinator,omitempty"`
	CAFile      string `json:"ca_file,omitempty"`
}

func loadProfileConfig(dir string) profileConfig {
	var pc profileConfig
	_ = atomicfile.ReadJSON(filepath.Join(dir, profileConfigFile), &pc)
	return pc
}

// profileName resolves the active profile: --profile, then
// CLUSTRAL_PROFILE, then the current-profile file, then "default".
func (g *globals) profileName() (string, error) {
	p := firstNonEmpty(g.profile, os.Getenv("CLUSTRAL_PROFILE"))
	if p == "" {
		p = currentProfile()
	}
	if !profileNameRE.MatchString(p) {
		return "", usageError{fmt.Errorf("profile name %q is not valid (lower-case letters, digits, '.', '_', '-')", p)}
	}
	return p, nil
}

// currentProfile reads the current-profile file; "default" when unset.
func currentProfile() string {
	base, err := configBase()
	if err != nil {
		return defaultProfile
	}
	b, err := os.ReadFile(filepath.Join(base, currentProfileFile))
	if p := strings.TrimSpace(string(b)); err == nil && p != "" {
		return p
	}
	return defaultProfile
}

// accountPath is where a login's session is kept among a profile's
// accounts.
func accountPath(dir, login string) string {
	safe := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("@._+-", r):
			return r
		}
		return '_'
	}, login)
	if safe == "" || strings.Trim(safe, ".") == "" {
		safe = "_"
	}
	return filepath.Join(dir, accountsDir, safe+".json")
}

// profileView is one row of clustral profiles list. Its JSON names are
// stable.
type profileView struct {
	Name           string    `json:"name"`
	Current        bool      `json:"current"`
	Coordinator    string    `json:"coordinator,omitempty"`
	User           string    `json:"user,omitempty"`
	SessionExpires time.Time `json:"session_expires,omitzero"`
	Dir            string    `json:"dir"`
}

func listProfiles(g *globals) ([]profileView, error) {
	base, err := configBase()
	if err != nil {
		return nil, err
	}
	cur, err := g.profileName()
	if err != nil {
		return nil, err
	}
	names := []string{defaultProfile}
	ents, _ := os.ReadDir(filepath.Join(base, "profiles"))
	for _, e := range ents {
		if e.IsDir() && profileNameRE.MatchString(e.Name()) && !slices.Contains(names, e.Name()) {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	var out []profileView
	for _, n := range names {
		dir, _ := profileDir(n)
		v := profileView{Name: n, Current: n == cur, Dir: dir, Coordinator: loadProfileConfig(dir).Coordinator}
		if s, _ := loadSession(dir); s != nil {
			v.Coordinator, v.User, v.SessionExpires = s.Coordinator, s.Session.User.Login, s.Session.ExpiresAt
		}
		out = append(out, v)
	}
	return out, nil
}

func newProfilesCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "profiles",
		Short: "Keep several coordinators apart: each profile has its own URL, logins and tunnel",
		Long: `A profile is a directory of its own coordinator URL, logins and tunnel
state. --profile or CLUSTRAL_PROFILE picks one per command; clustral
profiles use picks the one used otherwise.`,
		Example: `  clustral profiles create staging --coordinator https://clustral.staging.example.com
  clustral profiles use staging
  clustral profiles list`,
	}
	c.AddCommand(newProfilesCreateCmd(g), newProfilesUseCmd(g), newProfilesListCmd(g), newProfilesCurrentCmd(g), newProfilesDeleteCmd(g))
	return c
}

func newProfilesCreateCmd(g *globals) *cobra.Command {
	var (
		pc  profileConfig
		use bool
	)
	c := &cobra.Command{
		Use:   "create <name>",
		Short: "Create a profile, optionally with its coordinator URL",
		Example: `  clustral profiles create staging --coordinator https://clustral.staging.example.com --use
  clustral --profile staging login`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			name := args[0]
			if !profileNameRE.MatchString(name) {
				return usageError{fmt.Errorf("profile name %q is not valid (lower-case letters, digits, '.', '_', '-')", name)}
			}
			dir, err := profileDir(name)
			if err != nil {
				return err
			}
			if _, err := os.Stat(dir); err == nil {
				return withHint(exitError, fmt.Errorf("profile %q already exists", name), "use it: clustral profiles use "+name)
			}
			if pc.Coordinator != "" {
				if pc.Coordinator, err = normalizeURL(pc.Coordinator); err != nil {
					return usageError{err}
				}
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			if err := atomicfile.WriteJSON(filepath.Join(dir, profileConfigFile), pc, 0o600); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "Created profile %s.\n", name)
			if use {
				return setCurrentProfile(g, name)
			}
			return nil
		},
	}
	c.Flags().StringVar(&pc.Coordinator, "coordinator", "", "the profile's coordinator URL (clustral login then needs no URL)")
	c.Flags().StringVar(&pc.CAFile, "ca-file", "", "PEM bundle to trust for this coordinator")
	c.Flags().BoolVar(&use, "use", false, "make it the current profile")
	return c
}

func setCurrentProfile(g *globals, name string) error {
	base, err := configBase()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(base, currentProfileFile), []byte(name+"\n"), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "Now using profile %s.\n", name)
	return nil
}

func newProfilesUseCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "use <name>",
		Short:   "Make a profile the current one",
		Example: "  clustral profiles use staging",
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			name := args[0]
			dir, err := profileDir(name)
			if err != nil {
				return err
			}
			if _, err := os.Stat(dir); err != nil && name != defaultProfile {
				return withHint(exitError, fmt.Errorf("no profile %q", name), "create it: clustral profiles create "+name)
			}
			return setCurrentProfile(g, name)
		},
	}
}

func newProfilesListCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the profiles, their coordinators and logins",
		Example: "  clustral profiles list\n  clustral profiles list -o json",
		Args:    cobra.NoArgs,
	}
	out := outputFlag(c)
	c.RunE = func(c *cobra.Command, _ []string) error {
		ps, err := listProfiles(g)
		if err != nil {
			return err
		}
		return render(g.stdout, *out, ps, func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "CURRENT\tNAME\tCOORDINATOR\tUSER\tSESSION")
			for _, p := range ps {
				mark, sess := "", "-"
				if p.Current {
					mark = "*"
				}
				if !p.SessionExpires.IsZero() {
					sess = remaining(p.SessionExpires)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", mark, p.Name, dash(p.Coordinator), dash(p.User), sess)
			}
		})
	}
	return c
}

func newProfilesCurrentCmd(g *globals) *cobra.Command {
	return valueCmd(g, &cobra.Command{
		Use:     "current",
		Short:   "Print the profile in use",
		Example: "  clustral profiles current",
		Args:    cobra.NoArgs,
	}, "name", g.profileName)
}

func newProfilesDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "delete <name>",
		Short:   "Delete a profile and its logins (not the default one)",
		Example: "  clustral profiles delete staging",
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			name := args[0]
			if name == defaultProfile {
				return withHint(exitUsage, errors.New("the default profile cannot be deleted"), "to start afresh: clustral --profile default config clean")
			}
			dir, err := profileDir(name)
			if err != nil {
				return err
			}
			if _, err := os.Stat(dir); err != nil {
				return withHint(exitError, fmt.Errorf("no profile %q", name), "see: clustral profiles list")
			}
			if tunnel, alive := device.ReadState(dir); alive {
				return withHint(exitError, fmt.Errorf("profile %q has a running tunnel (pid %d)", name, tunnel.PID), "stop it first: clustral --profile "+name+" down")
			}
			if err := os.RemoveAll(dir); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "Deleted profile %s.\n", name)
			if currentProfile() == name {
				return setCurrentProfile(g, defaultProfile)
			}
			return nil
		},
	}
}

// accountView is one row of clustral accounts list. Its JSON names are
// stable.
type accountView struct {
	Login          string    `json:"login"`
	Current        bool      `json:"current"`
	Coordinator    string    `json:"coordinator"`
	SessionExpires time.Time `json:"session_expires,omitzero"`
}

func listAccounts(dir string) ([]accountView, []*storedSession) {
	cur, _ := loadSession(dir)
	var (
		out  []accountView
		sess []*storedSession
	)
	files, _ := filepath.Glob(filepath.Join(dir, accountsDir, "*.json"))
	slices.Sort(files)
	seenCur := false
	for _, f := range files {
		var s storedSession
		if atomicfile.ReadJSON(f, &s) != nil {
			continue
		}
		isCur := cur != nil && cur.Session.User.Login == s.Session.User.Login && cur.Coordinator == s.Coordinator
		seenCur = seenCur || isCur
		out = append(out, accountView{Login: s.Session.User.Login, Current: isCur, Coordinator: s.Coordinator, SessionExpires: s.Session.ExpiresAt})
		sess = append(sess, &s)
	}
	if cur != nil && !seenCur { // a login from before accounts were kept
		out = append(out, accountView{Login: cur.Session.User.Login, Current: true, Coordinator: cur.Coordinator, SessionExpires: cur.Session.ExpiresAt})
		sess = append(sess, cur)
	}
	return out, sess
}

func newAccountsCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "accounts",
		Short: "Switch between several logins to the profile's coordinator",
		Long: `Every clustral login is kept as an account of the profile; one of them is
active. clustral accounts use switches without signing in again while the
session is valid.`,
		Example: `  clustral login                 # adds an account
  clustral accounts list
  clustral accounts use admin@example.com`,
	}
	c.AddCommand(newAccountsListCmd(g), newAccountsUseCmd(g), newAccountsRemoveCmd(g))
	return c
}

func newAccountsListCmd(g *globals) *cobra.Command {
	return viewCmd(g, &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the profile's logins",
		Example: "  clustral accounts list\n  clustral accounts list -o json",
		Args:    cobra.NoArgs,
	}, func(_ *cobra.Command, dir string) ([]accountView, error) {
		as, _ := listAccounts(dir)
		if as == nil {
			as = []accountView{}
		}
		return as, nil
	}, func(tw *tabwriter.Writer, as []accountView) {
		if len(as) == 0 {
			fmt.Fprintln(tw, "No accounts. Run: clustral login <coordinator-url>")
			return
		}
		fmt.Fprintln(tw, "CURRENT\tLOGIN\tCOORDINATOR\tSESSION")
		for _, a := range as {
			mark := ""
			if a.Current {
				mark = "*"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", mark, a.Login, a.Coordinator, remaining(a.SessionExpires))
		}
	})
}

// account finds the profile's account login, and returns the profile's
// directory with it.
func (g *globals) account(login string) (dir string, s *storedSession, err error) {
	if dir, err = g.dir(); err != nil {
		return "", nil, err
	}
	as, ss := listAccounts(dir)
	for i, a := range as {
		if a.Login == login {
			return dir, ss[i], nil
		}
	}
	return "", nil, withHint(exitError, fmt.Errorf("no account %q in this profile", login), "see: clustral accounts list; add one: clustral login")
}

func newAccountsUseCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "use <login>",
		Short:   "Make one of the profile's logins the active one",
		Example: "  clustral accounts use admin@example.com",
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			dir, s, err := g.account(args[0])
			if err != nil {
				return err
			}
			if err := saveSession(dir, s); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "Now using %s on %s (%s).\n", s.Session.User.Login, s.Coordinator, remaining(s.Session.ExpiresAt))
			if tunnel, alive := device.ReadState(dir); alive && tunnel.User != s.Session.User.Login {
				fmt.Fprintln(g.stderr, g.style(g.stderr).dim(fmt.Sprintf("hint: the tunnel still runs as %s; switch it: clustral down && clustral up", tunnel.User)))
			}
			return nil
		},
	}
}

func newAccountsRemoveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "remove <login>",
		Aliases: []string{"rm"},
		Short:   "Forget one of the profile's logins on this machine (clustral logout also revokes it)",
		Example: "  clustral accounts remove old@example.com",
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			dir, s, err := g.account(args[0])
			if err != nil {
				return err
			}
			if err := os.Remove(accountPath(dir, s.Session.User.Login)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			if cur, _ := loadSession(dir); cur != nil && cur.Session.User.Login == s.Session.User.Login && cur.Coordinator == s.Coordinator {
				if err := os.Remove(filepath.Join(dir, sessionFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
			}
			fmt.Fprintf(g.stdout, "Removed account %s.\n", s.Session.User.Login)
			return nil
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
