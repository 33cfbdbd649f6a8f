package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
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

// K9s is the k9s built by components/build.sh running in the one pane of
// a tmux server of its own, as a user runs it in a terminal. The screen
// is read with tmux capture-pane and keys are typed with send-keys. Its
// methods fail the test it was started for; they are not safe for
// concurrent use.
//
// The tmux server runs in the foreground (tmux -D) as a harness Process,
// so it dies with the test binary (Pdeathsig); k9s runs in the server's
// pane, a session of its own, and carries OwnerEnv, so ReapOrphans kills
// it should it outlive a crashed test binary. The test's cleanup kills
// k9s and stops the server. k9s's configuration, state and log live in a
// directory of the test's ($K9S_CONFIG_DIR and the XDG directories), so
// a developer's k9s setup is never read or touched.
type K9s struct {
	t       testing.TB
	tmux    string
	socket  string
	server  *Process
	panePid int
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

// tmuxConfig keeps a pane whose program exited (so its last screen can
// be read) and gives k9s the whole window.
const tmuxConfig = `set -g remain-on-exit on
set -g status off
set -g default-terminal screen-256color
set -g history-limit 5000
`

// StartK9s starts k9s in a tmux pane for t with o and returns once the
// pane runs; wait for what the screen should show with WaitScreen. t
// fails if tmux or k9s cannot be started.
func StartK9s(t testing.TB, o K9sOptions) *K9s {
	t.Helper()
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		t.Fatalf("k9s runs in tmux, which is missing (apt-get install -y tmux): %v", err)
	}
	bin, err := Binary("k9s")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// A unix socket path is limited to 108 bytes; t.TempDir's can be
	// longer, so the socket gets a short directory of its own.
	sockDir, err := os.MkdirTemp("", "k9s-tmux")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	k := &K9s{t: t, tmux: tmux, socket: filepath.Join(sockDir, "s"), LogPath: filepath.Join(dir, "k9s.log")}
	confDir := filepath.Join(dir, "k9s")
	if err := os.MkdirAll(confDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, "config.yaml"), []byte(k9sConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	tmuxConf := filepath.Join(dir, "tmux.conf")
	if err := os.WriteFile(tmuxConf, []byte(tmuxConfig), 0o600); err != nil {
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

	k.server, err = StartProcess("tmux", tmux, []string{"-D", "-S", k.socket, "-f", tmuxConf}, env, filepath.Join(dir, "tmux.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Stop)
	err = k.server.waitReady(context.Background(), 10*time.Second, func(ctx context.Context) error {
		_, err := k.run(ctx, "list-sessions")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	w, h := o.Width, o.Height
	if w == 0 {
		w = 200
	}
	if h == 0 {
		h = 50
	}
	args := []string{"new-session", "-d", "-s", "k9s", "-x", strconv.Itoa(w), "-y", strconv.Itoa(h), "--", bin}
	args = append(args, o.commandLine(k.LogPath)...)
	if _, err := k.run(context.Background(), args...); err != nil {
		t.Fatal(err)
	}
	pid, err := k.run(context.Background(), "display-message", "-p", "-t", "k9s", "#{pane_pid}")
	if err != nil {
		t.Fatal(err)
	}
	if k.panePid, err = strconv.Atoi(strings.TrimSpace(pid)); err != nil {
		t.Fatalf("tmux pane pid %q: %v", pid, err)
	}
	return k
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

// run runs a tmux client command against k's server and returns its
// standard output.
func (k *K9s) run(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, k.tmux, append([]string{"-S", k.socket}, args...)...)
	cmd.Env = EnvironWithout("TMUX")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return "", fmt.Errorf("tmux %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// Screen returns what the pane shows now, one line per row, without
// colors.
func (k *K9s) Screen() string {
	k.t.Helper()
	s, err := k.run(context.Background(), "capture-pane", "-p", "-t", "k9s")
	if err != nil {
		k.t.Fatal(err)
	}
	return s
}

// exited reports whether k9s has exited, and how.
func (k *K9s) exited() (bool, string) {
	s, err := k.run(context.Background(), "display-message", "-p", "-t", "k9s", "#{pane_dead} #{pane_dead_status}")
	if err != nil {
		return true, err.Error()
	}
	dead, status, _ := strings.Cut(strings.TrimSpace(s), " ")
	return dead == "1", "exit status " + status
}

// WaitScreen polls the screen until ok accepts it and returns it. It
// fails the test, naming what it waited for and showing the last screen
// and k9s's log, if k9s exits first or timeout passes.
func (k *K9s) WaitScreen(timeout time.Duration, what string, ok func(screen string) bool) string {
	k.t.Helper()
	var screen string
	err := poll(context.Background(), timeout, func(context.Context) error {
		var err error
		screen, err = k.run(context.Background(), "capture-pane", "-p", "-t", "k9s")
		if err != nil {
			return permanent{err}
		}
		if ok(screen) {
			return nil
		}
		if dead, how := k.exited(); dead {
			return permanent{fmt.Errorf("k9s exited (%s)", how)}
		}
		return errors.New("not on the screen yet")
	})
	if err != nil {
		k.t.Fatalf("k9s: no %s: %v\n--- screen ---\n%s\n--- k9s log ---\n%s", what, err, screen, tailFile(k.LogPath, 40))
	}
	return screen
}

// WaitContains waits until the screen shows s.
func (k *K9s) WaitContains(timeout time.Duration, s string) string {
	k.t.Helper()
	return k.WaitScreen(timeout, fmt.Sprintf("%q on the screen", s), func(screen string) bool { return strings.Contains(screen, s) })
}

// Keys types keys into the pane, as tmux send-keys names them ("Enter",
// "Escape", "C-c", or literal text).
func (k *K9s) Keys(keys ...string) {
	k.t.Helper()
	if _, err := k.run(context.Background(), append([]string{"send-keys", "-t", "k9s"}, keys...)...); err != nil {
		k.t.Fatal(err)
	}
}

// Stop kills k9s (its whole session) and stops the tmux server. It may be
// called more than once.
func (k *K9s) Stop() {
	if k.panePid > 0 {
		// The pane's program leads a session and process group of its own.
		syscall.Kill(-k.panePid, syscall.SIGKILL)
		poll(context.Background(), 5*time.Second, func(context.Context) error {
			if alive(k.panePid) {
				return errors.New("k9s still running")
			}
			return nil
		})
		k.panePid = 0
	}
	k.server.Stop()
}
