package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/cli/device"
	"github.com/clustral/clustral/cli/kubeconfig"
)

// TestKubeLoginLogout: with up running, logout and login remove and add
// one context through the control socket and leave the others alone;
// without up they only record the choice.
func TestKubeLoginLogout(t *testing.T) {
	e := newRealEnv(t, nil)
	e.useSession(setupUserGrants(e))
	u := startFakeUp(e, "prod", "staging")
	ours := func() []string {
		t.Helper()
		names, err := kubeconfig.Writer{Path: e.kubeconfig}.Ours()
		if err != nil {
			t.Fatal(err)
		}
		return names
	}

	if code, out, errb := e.run("kube", "logout", "staging"); code != 0 || !strings.Contains(out, "Removed context clustral-staging") {
		t.Fatalf("logout: exit %d, %s %s", code, out, errb)
	}
	if got := ours(); !slices.Equal(got, []string{"clustral-prod"}) {
		t.Errorf("after logout contexts = %v", got)
	}
	if _, out, _ := e.run("kube", "ls"); !strings.Contains(out, "clustral-staging  logged-out") {
		t.Errorf("kube ls after logout:\n%s", out)
	}
	if code, out, errb := e.run("kube", "login", "staging"); code != 0 || !strings.Contains(out, "Added context clustral-staging") {
		t.Fatalf("login: exit %d, %s %s", code, out, errb)
	}
	if got := ours(); !slices.Equal(got, []string{"clustral-prod", "clustral-staging"}) {
		t.Errorf("after login contexts = %v", got)
	}
	if code, _, errb := e.run("kube", "login", "nope"); code != exitDenied || !strings.Contains(errb, `no cluster "nope"`) {
		t.Errorf("unknown cluster: exit %d, %s", code, errb)
	}
	u.mu.Lock()
	reqs := slices.Clone(u.reqs)
	u.mu.Unlock()
	if !slices.Equal(reqs, []string{"DELETE staging", "POST staging"}) {
		t.Errorf("control requests = %v", reqs)
	}

	// Without a running up the choice is recorded for the next one.
	os.Remove(filepath.Join(e.dir, device.StateFile))
	if code, out, _ := e.run("kube", "logout", "prod"); code != 0 || !strings.Contains(out, "not running") {
		t.Errorf("logout without up: exit %d, %s", code, out)
	}
	if got := device.Excluded(e.dir); !slices.Equal(got, []string{"prod"}) {
		t.Errorf("excluded = %v", got)
	}
}

// TestProfilesAndAccounts: profiles keep coordinators apart, default
// cannot be deleted; accounts switch logins within a profile.
func TestProfilesAndAccounts(t *testing.T) {
	e := newRealEnv(t, nil)
	steps := []struct {
		args     []string
		wantCode int
		want     string
	}{
		{[]string{"profiles", "create", "staging", "--coordinator", "clustral.staging.example.com", "--use"}, 0, "Now using profile staging"},
		{[]string{"profiles", "current"}, 0, "staging\n"},
		{[]string{"profiles", "create", "staging"}, exitError, `profile "staging" already exists`},
		{[]string{"profiles", "list"}, 0, "*        staging  https://clustral.staging.example.com"},
		{[]string{"--profile", "default", "config", "path"}, 0, filepath.Join(e.base, "profiles", "default")},
		{[]string{"config", "path"}, 0, filepath.Join(e.base, "profiles", "staging")},
		{[]string{"profiles", "delete", "default"}, exitUsage, "the default profile cannot be deleted"},
		{[]string{"profiles", "use", "nope"}, exitError, `no profile "nope"`},
		{[]string{"profiles", "delete", "staging"}, 0, "Now using profile default"},
		{[]string{"profiles", "current"}, 0, "default\n"},
	}
	for _, s := range steps {
		code, out, errb := e.run(s.args...)
		if code != s.wantCode || !strings.Contains(out+errb, s.want) {
			t.Fatalf("%v: exit %d (want %d), output %q, want %q", s.args, code, s.wantCode, out+errb, s.want)
		}
	}

	e.login("alice@example.com", fixedNow.Add(time.Hour))
	e.login("admin@example.com", fixedNow.Add(2*time.Hour))
	if _, out, _ := e.run("whoami"); !strings.HasPrefix(out, "admin@example.com") {
		t.Errorf("whoami = %q", out)
	}
	if code, out, _ := e.run("accounts", "use", "alice@example.com"); code != 0 || !strings.Contains(out, "Now using alice@example.com") {
		t.Errorf("accounts use: %d %q", code, out)
	}
	if _, out, _ := e.run("whoami"); !strings.HasPrefix(out, "alice@example.com") {
		t.Errorf("whoami after switch = %q", out)
	}
	_, out, _ := e.run("accounts", "list")
	if !strings.Contains(out, "*        alice@example.com") || !strings.Contains(out, "         admin@example.com") {
		t.Errorf("accounts list:\n%s", out)
	}
	if code, _, _ := e.run("accounts", "remove", "alice@example.com"); code != 0 {
		t.Errorf("remove: exit %d", code)
	}
	if code, _, _ := e.run("whoami"); code != exitAuth {
		t.Errorf("whoami after removing the active account: exit %d, want %d", code, exitAuth)
	}
	if code, _, errb := e.run("accounts", "use", "nobody"); code != exitError || !strings.Contains(errb, `no account "nobody"`) {
		t.Errorf("use unknown: %d %s", code, errb)
	}
}

// TestCompletionBash: the bash script loads and registers completion for
// clustral.
func TestCompletionBash(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	e := newBareEnv(t)
	for _, sh := range []string{"bash", "zsh", "fish", "powershell"} {
		code, out, errb := e.run("completion", sh)
		if code != 0 || !strings.Contains(out, "clustral") {
			t.Fatalf("completion %s: exit %d, %s", sh, code, errb)
		}
		if sh == "bash" {
			script := filepath.Join(t.TempDir(), "clustral.bash")
			os.WriteFile(script, []byte(out), 0o600)
			got, err := exec.Command(bash, "-c", "source "+script+" && complete -p clustral").CombinedOutput()
			if err != nil || !strings.Contains(string(got), "clustral") {
				t.Errorf("bash: %v: %s", err, got)
			}
		}
	}
	if code, _, _ := e.run("completion", "tcsh"); code == 0 {
		t.Error("completion tcsh succeeded")
	}
}
