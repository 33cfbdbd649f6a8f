package harness

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// CLILogin is a running `clustral login`.
type CLILogin struct {
	Cmd      *exec.Cmd
	Stdout   strings.Builder
	AuthURL  string
	UserCode string // headless only
}

// StartLogin starts a coordinator and, as a new user d, `clustral login`
// against it with env and args (see StartCLILogin). It returns the user,
// the login, and the context that bounds the login, which ends after a
// minute or when t ends.
func (s *MeshSuite) StartLogin(t *testing.T, d DexUser, env []string, args ...string) (*TestUser, *CLILogin, context.Context) {
	t.Helper()
	s.StartCoordinator(t)
	u := s.NewUser(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return u, StartCLILogin(t, ctx, u, s.CoordURL(), env, args...), ctx
}

// StartCLILogin runs `clustral login coordURL` as u with args and extra
// environment, and reads from its stderr the URL (and, headless, the
// code) it prints. t's cleanup kills it if it still runs.
func StartCLILogin(t *testing.T, ctx context.Context, u *TestUser, coordURL string, env []string, args ...string) *CLILogin {
	t.Helper()
	l := &CLILogin{}
	l.Cmd = exec.CommandContext(ctx, u.Bin, append([]string{"login", coordURL}, args...)...)
	l.Cmd.Env = append(u.Environ(), env...)
	l.Cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := l.Cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	l.Cmd.Stdout = &l.Stdout
	if err := l.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Cmd.Process.Kill(); l.Cmd.Wait() })
	headless := slices.Contains(args, "--no-browser")
	sc := bufio.NewScanner(stderr)
	wantCode := false
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "https://") && l.AuthURL == "":
			l.AuthURL = line
		case strings.Contains(line, "asks for this code"):
			wantCode = true
		case wantCode && line != "":
			l.UserCode = line
		}
		if l.AuthURL != "" && (!headless || l.UserCode != "") {
			break
		}
	}
	go io.Copy(io.Discard, stderr)
	if l.AuthURL == "" {
		t.Fatal("clustral login printed no URL")
	}
	if !strings.HasPrefix(l.AuthURL, u.s.Env.Dex.Issuer) || !strings.Contains(l.AuthURL, "code_challenge_method=S256") {
		t.Fatalf("auth URL %q is not Dex's with PKCE", l.AuthURL)
	}
	return l
}

// Wait waits for the login to end and fails t unless it exited cleanly
// and printed that it signed in as want (e.g. "as alice@example.com", or
// "Logged in to URL as alice@example.com").
func (l *CLILogin) Wait(t testing.TB, want string) {
	t.Helper()
	if err := l.Cmd.Wait(); err != nil {
		t.Fatalf("clustral login: %v", err)
	}
	if !strings.Contains(l.Stdout.String(), want) {
		t.Fatalf("clustral login printed %q, want %q in it", l.Stdout.String(), want)
	}
}

// Desktop is the environment of a machine with a browser: a display,
// and an xdg-open that opens nothing (the test plays the browser).
func Desktop(t *testing.T) []string {
	t.Helper()
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "xdg-open"), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return []string{"DISPLAY=:99", "PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH")}
}

// ReadPage reads and closes resp's body.
func ReadPage(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
