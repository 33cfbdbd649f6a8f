package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/cli/device"
	"github.com/clustral/clustral/pkg/version"
)

// TestGolden runs each user command against the fake coordinator and a
// fake running up, and compares its table and JSON output with
// testdata/<name>.golden (go test ./cli -run TestGolden -update rewrites
// them).
func TestGolden(t *testing.T) {
	e := newTestEnv(t)
	e.login("alice@example.com", fixedNow.Add(7*time.Hour+59*time.Minute))
	startFakeUp(e, "prod", "staging")
	if err := device.SetExcluded(e.dir, "dev", true); err != nil {
		t.Fatal(err)
	}
	oldVersion, oldCommit := version.Version, version.Commit
	version.Version, version.Commit = "v1.2.0", "abc123"
	t.Cleanup(func() { version.Version, version.Commit = oldVersion, oldCommit })

	tests := []struct {
		name string
		args []string
	}{
		{"whoami", []string{"whoami"}},
		{"status", []string{"status"}},
		{"kube-ls", []string{"kube", "ls"}},
		{"config-show", []string{"config", "show"}},
		{"config-path", []string{"config", "path"}},
		{"profiles-list", []string{"profiles", "list"}},
		{"profiles-current", []string{"profiles", "current"}},
		{"accounts-list", []string{"accounts", "list"}},
		{"doctor", []string{"doctor"}},
		{"version-check", []string{"version", "--check"}},
	}
	for _, tt := range tests {
		for _, format := range []string{"table", "json"} {
			name := tt.name + "." + format
			t.Run(name, func(t *testing.T) {
				code, out, errb := e.run(append(tt.args, "-o", format)...)
				if code != 0 {
					t.Fatalf("exit %d; stderr:\n%s", code, errb)
				}
				if strings.Contains(out+errb, "\033[") {
					t.Errorf("colour escapes in output that is not a terminal:\n%q", out+errb)
				}
				golden(t, name, e.mask(out))
			})
		}
	}
}
