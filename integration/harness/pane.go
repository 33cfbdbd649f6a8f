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

// PaneOptions configure StartPane.
type PaneOptions struct {
	// Name names the program in messages and is the tmux session's name.
	Name string
	// Program is the path of the program, run with Args.
	Program string
	Args    []string
	// Env is the whole environment of the tmux server and so of the
	// program; it should carry OwnerEnv (ownerEntry).
	Env []string
	// Width and Height are the pane's size; zero means 200 by 50.
	Width, Height int
	// Log, if set, is a log of the program's whose tail a failure shows.
	Log string
}

// Pane is a program running in the one pane of a tmux server of its own:
// on a pseudo-terminal, as a user runs it. The screen is read with tmux
// capture-pane and keys are typed with send-keys. Its methods fail the
// test it was started for; they are not safe for concurrent use.
//
// The tmux server runs in the foreground (tmux -D) as a harness Process,
// so it dies with the test binary (Pdeathsig); the program runs in the
// server's pane, a session of its own, and carries OwnerEnv, so
// ReapOrphans kills it should it outlive a crashed test binary. The
// test's cleanup kills the program and stops the server.
type Pane struct {
	t       testing.TB
	name    string
	log     string
	tmux    string
	socket  string
	server  *Process
	panePid int
}

// tmuxConfig keeps a pane whose program exited (so its last screen can
// be read) and gives the program the whole window.
const tmuxConfig = `set -g remain-on-exit on
set -g status off
set -g default-terminal screen-256color
set -g history-limit 5000
`

// StartPane starts o.Program in a tmux pane for t and returns once the
// pane runs; wait for what the screen should show with WaitScreen. t
// fails if tmux or the program cannot be started.
func StartPane(t testing.TB, o PaneOptions) *Pane {
	t.Helper()
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		t.Fatalf("%s runs in tmux, which is missing (apt-get install -y tmux): %v", o.Name, err)
	}
	dir := t.TempDir()
	// A unix socket path is limited to 108 bytes; t.TempDir's can be
	// longer, so the socket gets a short directory of its own.
	sockDir, err := os.MkdirTemp("", "pane-tmux")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	p := &Pane{t: t, name: o.Name, log: o.Log, tmux: tmux, socket: filepath.Join(sockDir, "s")}
	tmuxConf := filepath.Join(dir, "tmux.conf")
	if err := os.WriteFile(tmuxConf, []byte(tmuxConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	p.server, err = StartProcess("tmux", tmux, []string{"-D", "-S", p.socket, "-f", tmuxConf}, o.Env, filepath.Join(dir, "tmux.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	err = p.server.waitReady(context.Background(), 10*time.Second, func(ctx context.Context) error {
		_, err := p.run(ctx, "list-sessions")
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
	args := append([]string{"new-session", "-d", "-s", o.Name, "-x", strconv.Itoa(w), "-y", strconv.Itoa(h), "--", o.Program}, o.Args...)
	if _, err := p.run(context.Background(), args...); err != nil {
		t.Fatal(err)
	}
	pid, err := p.run(context.Background(), "display-message", "-p", "-t", o.Name, "#{pane_pid}")
	if err != nil {
		t.Fatal(err)
	}
	if p.panePid, err = strconv.Atoi(strings.TrimSpace(pid)); err != nil {
		t.Fatalf("tmux pane pid %q: %v", pid, err)
	}
	return p
}

// run runs a tmux client command against p's server and returns its
// standard output.
func (p *Pane) run(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.tmux, append([]string{"-S", p.socket}, args...)...)
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
func (p *Pane) Screen() string {
	p.t.Helper()
	s, err := p.run(context.Background(), "capture-pane", "-p", "-t", p.name)
	if err != nil {
		p.t.Fatal(err)
	}
	return s
}

// Exited reports whether the program has exited, and how.
func (p *Pane) Exited() (bool, string) {
	s, err := p.run(context.Background(), "display-message", "-p", "-t", p.name, "#{pane_dead} #{pane_dead_status}")
	if err != nil {
		return true, err.Error()
	}
	dead, status, _ := strings.Cut(strings.TrimSpace(s), " ")
	return dead == "1", "exit status " + status
}

// WaitScreen polls the screen until ok accepts it and returns it. It
// fails the test, naming what it waited for and showing the last screen
// and the program's log, if the program exits first or timeout passes.
func (p *Pane) WaitScreen(timeout time.Duration, what string, ok func(screen string) bool) string {
	p.t.Helper()
	var screen string
	err := poll(context.Background(), timeout, func(context.Context) error {
		var err error
		screen, err = p.run(context.Background(), "capture-pane", "-p", "-t", p.name)
		if err != nil {
			return permanent{err}
		}
		if ok(screen) {
			return nil
		}
		if dead, how := p.Exited(); dead {
			return permanent{fmt.Errorf("%s exited (%s)", p.name, how)}
		}
		return errors.New("not on the screen yet")
	})
	if err != nil {
		msg := fmt.Sprintf("%s: no %s: %v\n--- screen ---\n%s", p.name, what, err, screen)
		if p.log != "" {
			msg += fmt.Sprintf("\n--- %s log ---\n%s", p.name, tailFile(p.log, 40))
		}
		p.t.Fatal(msg)
	}
	return screen
}

// WaitContains waits until the screen shows s.
func (p *Pane) WaitContains(timeout time.Duration, s string) string {
	p.t.Helper()
	return p.WaitScreen(timeout, fmt.Sprintf("%q on the screen", s), func(screen string) bool { return strings.Contains(screen, s) })
}

// WaitExited waits until the program exits and returns how.
func (p *Pane) WaitExited(timeout time.Duration) string {
	p.t.Helper()
	var how string
	err := poll(context.Background(), timeout, func(context.Context) error {
		var dead bool
		if dead, how = p.Exited(); !dead {
			return errors.New("still running")
		}
		return nil
	})
	if err != nil {
		p.t.Fatalf("%s did not exit: %v\n--- screen ---\n%s", p.name, err, p.Screen())
	}
	return how
}

// Keys types keys into the pane, as tmux send-keys names them ("Enter",
// "Escape", "C-c", or literal text).
func (p *Pane) Keys(keys ...string) {
	p.t.Helper()
	if _, err := p.run(context.Background(), append([]string{"send-keys", "-t", p.name}, keys...)...); err != nil {
		p.t.Fatal(err)
	}
}

// Stop kills the program (its whole session) and stops the tmux server.
// It may be called more than once.
func (p *Pane) Stop() {
	if p.panePid > 0 {
		// The pane's program leads a session and process group of its own.
		syscall.Kill(-p.panePid, syscall.SIGKILL)
		poll(context.Background(), 5*time.Second, func(context.Context) error {
			if alive(p.panePid) {
				return fmt.Errorf("%s still running", p.name)
			}
			return nil
		})
		p.panePid = 0
	}
	p.server.Stop()
}
