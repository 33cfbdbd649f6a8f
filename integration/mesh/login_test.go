package mesh

import (
	"bufio"
	"context"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestInteractiveLogin plays the browser: `clustral login --no-browser`
// prints Dex's URL, the test signs in through Dex's HTML form, Dex
// redirects to the coordinator's callback, and the CLI's poll picks up the
// session.
func TestInteractiveLogin(t *testing.T) {
	suite.StartCoordinator(t)
	u := suite.NewUser(t, alice)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, u.Bin, "login", suite.CoordURL(), "--no-browser")
	cmd.Env = u.Environ()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stdout strings.Builder
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	// The URL is printed on its own indented line.
	sc := bufio.NewScanner(stderr)
	var authURL string
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); strings.HasPrefix(l, "https://") {
			authURL = l
			break
		}
	}
	if authURL == "" {
		t.Fatal("clustral login printed no URL")
	}
	if !strings.HasPrefix(authURL, suite.Env.Dex.Issuer) || !strings.Contains(authURL, "code_challenge_method=S256") {
		t.Fatalf("auth URL %q is not Dex's with PKCE", authURL)
	}
	go io.Copy(io.Discard, stderr)

	resp, err := suite.Env.Dex.Browser().LoginFollow(ctx, authURL, alice.Email, alice.Password)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "Signed in as "+alice.Email) {
		t.Fatalf("callback page: %d %s", resp.StatusCode, page)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("clustral login: %v", err)
	}
	if !strings.Contains(stdout.String(), "Logged in to "+suite.CoordURL()+" as "+alice.Email) {
		t.Fatalf("stdout = %q", stdout.String())
	}
	// The stored session works.
	out := u.MustRun("status", "-o", "json")
	if !strings.Contains(out, `"user": "alice@example.com"`) {
		t.Fatalf("status after login = %s", out)
	}
}
