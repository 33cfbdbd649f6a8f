package harness

import (
	"os"
	"path/filepath"
	"testing"
)

// K9sOptions configure StartK9s.
type K9sOptions struct {
	// Kubeconfig, Context and Namespace are passed as --kubeconfig,
	// --context and --namespace when set.
	Kubeconfig string
	Context    string
	Namespace  string
	// Command is the resource k9s shows first (--command), e.g. "pods".
	Command string
	// Write starts k9s in write mode; by default it is --readonly.
	Write bool
	// Args are more k9s flags.
	Args []string
	// Env is appended to k9s's environment (KEY=value).
	Env []string
	// Width and Height are the pane's size; zero means 200 by 50.
	Width, Height int
}

// K9s is the k9s built by components/build.sh running in a Pane, as a
// user runs it in a terminal: read its screen with WaitScreen, type with
// Keys. k9s's configuration, state and log live in a directory of the
// test's ($K9S_CONFIG_DIR and the XDG directories), so a developer's k9s
// setup is never read or touched.
type K9s struct {
	*Pane
	// LogPath is k9s's own log (--logFile).
	LogPath string
}

// k9sConfig is k9s's config.yaml: no check for a newer release (the
// tests run offline) and no logo, header or splash taking rows.
const k9sConfig = `k9s:
  skipLatestRevCheck: true
  ui:
    headless: true
    logoless: true
    splashless: true
    noIcons: true
    enableMouse: false
`

// StartK9s starts k9s in a tmux pane for t with o and returns once the
// pane runs; wait for what the screen should show with WaitScreen. t
// fails if tmux or k9s cannot be started.
func StartK9s(t testing.TB, o K9sOptions) *K9s {
	t.Helper()
	bin, err := Binary("k9s")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	logPath := filepath.Join(dir, "k9s.log")
	confDir := filepath.Join(dir, "k9s")
	if err := os.MkdirAll(confDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, "config.yaml"), []byte(k9sConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(EnvironWithout("KUBECONFIG=", "TMUX", "K9S_", "XDG_", OwnerEnv+"="), ownerEntry,
		"K9S_CONFIG_DIR="+confDir,
		"XDG_CONFIG_HOME="+filepath.Join(dir, "xdg", "config"),
		"XDG_DATA_HOME="+filepath.Join(dir, "xdg", "data"),
		"XDG_STATE_HOME="+filepath.Join(dir, "xdg", "state"),
		"XDG_CACHE_HOME="+filepath.Join(dir, "xdg", "cache"),
	)
	env = append(env, o.Env...)
	p := StartPane(t, PaneOptions{Name: "k9s", Program: bin, Args: o.commandLine(logPath), Env: env,
		Width: o.Width, Height: o.Height, Log: logPath})
	return &K9s{Pane: p, LogPath: logPath}
}

// commandLine returns k9s's flags for o, logging to logPath.
func (o K9sOptions) commandLine(logPath string) []string {
	args := []string{"--logFile", logPath, "--headless", "--logoless", "--splashless"}
	if !o.Write {
		args = append(args, "--readonly")
	}
	for _, f := range []struct{ flag, v string }{
		{"--kubeconfig", o.Kubeconfig}, {"--context", o.Context}, {"--namespace", o.Namespace}, {"--command", o.Command},
	} {
		if f.v != "" {
			args = append(args, f.flag, f.v)
		}
	}
	return append(args, o.Args...)
}
