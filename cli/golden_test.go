package cli

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/cli/device"
	"github.com/clustral/clustral/coordinator"
	"github.com/clustral/clustral/pkg/version"
	"github.com/clustral/clustral/proto"
)

// TestGolden runs each user command against a real coordinator
// in-process and a fake running up, and compares its table and JSON
// output with testdata/<name>.golden (go test ./cli -run TestGolden
// -update rewrites them).
func TestGolden(t *testing.T) {
	e := newRealEnv(t, func(c *coordinator.Config) {
		c.SessionTTL = 7*time.Hour + 59*time.Minute
		c.Version = "v1.3.0"
	})
	e.useSession(setupUserGrants(e))
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
		{"version", []string{"version"}},
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

// setupUserGrants gives e's real coordinator two clusters, prod and
// staging, and alice@example.com (groups dev) the role viewer on prod by
// assignment and the role admin on staging by an access request approved
// for two hours; it returns alice's session.
func setupUserGrants(e *testEnv) proto.Session {
	e.t.Helper()
	c, v := e.real, proto.APIVersion
	admin := c.Login("admin@example.com").Token
	alice := c.Login("alice@example.com", "dev")
	for _, name := range []string{"prod", "staging"} {
		c.Do(admin, http.MethodPost, v+"/clusters", proto.CreateClusterRequest{Name: name}, nil)
	}
	c.Do(admin, http.MethodPost, v+"/roles", proto.Role{Name: "viewer", Groups: []string{"view"}}, nil)
	c.Do(admin, http.MethodPost, v+"/roles", proto.Role{Name: "admin", Groups: []string{"system:masters"}}, nil)
	c.Do(admin, http.MethodPost, v+"/assignments", proto.Assignment{User: "alice@example.com", Role: "viewer", Cluster: "prod"}, nil)
	var ar proto.AccessRequest
	c.Do(alice.Token, http.MethodPost, v+"/access-requests",
		proto.CreateAccessRequest{Role: "admin", Cluster: "staging", Duration: proto.Duration(2 * time.Hour), Reason: "load test"}, &ar)
	c.Do(admin, http.MethodPost, v+"/access-requests/"+ar.ID+"/approve", proto.AccessDecision{}, nil)
	return alice
}
