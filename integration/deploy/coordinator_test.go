package deploy

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

const unitName = "clustral-coordinator.service"

// unitDirectives parses a systemd unit into section -> key -> values (a
// key may repeat).
func unitDirectives(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string][]string{}
	var section string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: bad line %q", path, line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCoordinatorUnitHardening checks the directives the service's
// isolation rests on.
func TestCoordinatorUnitHardening(t *testing.T) {
	svc := unitDirectives(t, repoPath("deploy", "coordinator", unitName))["Service"]
	if svc == nil {
		t.Fatal("no [Service] section")
	}
	want := map[string]string{
		"User":                    "clustral",
		"StateDirectory":          "clustral",
		"ReadWritePaths":          "/var/lib/clustral",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"ProtectKernelTunables":   "yes",
		"ProtectKernelModules":    "yes",
		"ProtectKernelLogs":       "yes",
		"ProtectControlGroups":    "yes",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"RestrictNamespaces":      "yes",
		"LockPersonality":         "yes",
		"MemoryDenyWriteExecute":  "yes",
		"CapabilityBoundingSet":   "",
		"AmbientCapabilities":     "",
		"Restart":                 "on-failure",
		"ExecReload":              "/bin/kill -HUP $MAINPID",
	}
	for k, v := range want {
		if got, ok := svc[k]; !ok || got[len(got)-1] != v {
			t.Errorf("%s=%q, want %q", k, got, v)
		}
	}
	if !slices.Contains(svc["SystemCallFilter"], "@system-service") {
		t.Errorf("SystemCallFilter=%q, want @system-service", svc["SystemCallFilter"])
	}
	if slices.Contains(svc["DynamicUser"], "yes") {
		t.Error("DynamicUser=yes: restores and secret files need the stable clustral user")
	}
	exec := svc["ExecStart"]
	if len(exec) != 1 || !strings.HasPrefix(exec[0], "/usr/local/bin/clustral coordinator --config /etc/clustral/coordinator.yaml") {
		t.Errorf("ExecStart=%q", exec)
	}
}

// verifiableUnit writes the unit to a temporary directory with ExecStart
// pointing at an executable there, because systemd-analyze verify checks
// that the command exists and this machine has no /usr/local/bin/clustral.
func verifiableUnit(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(repoPath("deploy", "coordinator", unitName))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "clustral")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unit := strings.ReplaceAll(string(b), "ExecStart=/usr/local/bin/clustral ", "ExecStart="+bin+" ")
	if unit == string(b) {
		t.Fatal("ExecStart does not run /usr/local/bin/clustral")
	}
	path := filepath.Join(dir, unitName)
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed; the unit's syntax is not verified")
	}
	return p
}

func TestCoordinatorUnitVerify(t *testing.T) {
	sa := systemdAnalyze(t)
	path := verifiableUnit(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, sa, "verify", path).CombinedOutput()
	// verify reports problems on stderr even when it exits 0 (e.g. an
	// unknown directive), so any output mentioning the unit fails too.
	if err != nil || strings.Contains(string(out), unitName) {
		t.Fatalf("systemd-analyze verify %s: %v\n%s", path, err, out)
	}
}

// TestCoordinatorUnitSecurity has systemd rate the unit's exposure
// offline (0 is fully locked down, 10 is unprotected).
func TestCoordinatorUnitSecurity(t *testing.T) {
	sa := systemdAnalyze(t)
	path := verifiableUnit(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, sa, "security", "--offline=true", "--no-pager", path).CombinedOutput()
	if strings.Contains(string(out), "--offline") || strings.Contains(string(out), "unrecognized option") {
		t.Skipf("systemd-analyze cannot rate a unit file offline here:\n%s", out)
	}
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+) (\w+)`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	if m[2] != "OK" {
		t.Errorf("exposure %s %s, want OK (below 2.0)", m[1], m[2])
	}
	t.Logf("exposure %s %s", m[1], m[2])
}

// configKeys returns the keys set in a YAML file and the keys named in
// comments as "# key: ..." (documented but left at their default).
func configKeys(t *testing.T, path string) (set map[string]any, documented map[string]bool) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &set); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	documented = map[string]bool{}
	commented := regexp.MustCompile(`^#\s?([a-z0-9][a-z0-9-]*):`)
	for line := range strings.Lines(string(b)) {
		if m := commented.FindStringSubmatch(line); m != nil {
			documented[m[1]] = true
		}
	}
	for k := range set {
		documented[k] = true
	}
	return set, documented
}

// TestCoordinatorConfigKeys checks the example configuration against
// `clustral coordinator --help`: every key is a flag, and every flag is
// documented in the file (set, or in a comment at its default).
func TestCoordinatorConfigKeys(t *testing.T) {
	local, global := helpFlags(t, "coordinator")
	set, documented := configKeys(t, repoPath("deploy", "coordinator", "coordinator.yaml"))
	for k := range documented {
		if !local[k] && !global[k] {
			t.Errorf("coordinator.yaml key %q is not a flag of `clustral coordinator`", k)
		}
	}
	for f := range local {
		if f == "help" || f == "config" {
			continue
		}
		if !documented[f] {
			t.Errorf("flag --%s is not documented in deploy/coordinator/coordinator.yaml", f)
		}
	}
	if set["oidc-client-secret"] != nil {
		t.Error("the example sets oidc-client-secret; secrets belong in oidc-client-secret-file")
	}
	if set["data-dir"] != "/var/lib/clustral" {
		t.Errorf("data-dir = %v, want the unit's StateDirectory /var/lib/clustral", set["data-dir"])
	}
}

// TestCoordinatorConfigLoads has the real binary read the example file,
// with the OIDC client secret file pointed at a missing path: the
// coordinator reads and checks the whole file, the log settings and the
// overlay prefixes first, then fails to read the secret, so that error
// shows every value in the file was accepted, and nothing is started.
func TestCoordinatorConfigLoads(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-secret")
	configLoadsUntil(t, repoPath("deploy", "coordinator", "coordinator.yaml"), missing, nil, "--oidc-client-secret-file", missing)
}

// configLoadsUntil runs the coordinator on the config file at path, with
// env and args added, and wants it refused with an error that names
// missing and nothing else: no configuration error, and not started.
func configLoadsUntil(t *testing.T, path, missing string, env []string, args ...string) {
	t.Helper()
	bin := clustral(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, bin, append([]string{"coordinator", "--config", path,
		// Should the coordinator ever get further, keep it off the host.
		"--data-dir", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0"}, args...)...)
	c.Env = append(cleanEnv(), env...)
	c.Dir = dir
	out, err := c.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("the coordinator did not stop at %s; it may have started:\n%s", missing, out)
	}
	if err == nil {
		t.Fatalf("clustral coordinator started without %s:\n%s", missing, out)
	}
	if strings.Contains(string(out), "configuration:") || !strings.Contains(string(out), missing) {
		t.Fatalf("want only %s refused, got:\n%s", missing, out)
	}
}
