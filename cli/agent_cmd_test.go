package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/clustral/clustral/proto"
)

func TestDefaultAuditDirIsAStateDirectory(t *testing.T) {
	home := t.TempDir()
	tests := []struct {
		name, state, xdg string
		want             string
	}{
		{"systemd", "/var/lib/clustral-agent:/var/lib/other", "", "/var/lib/clustral-agent/audit"},
		{"XDG", "", "/xdg/state", "/xdg/state/clustral/agent-audit"},
		{"relative XDG is ignored", "", "state", home + "/.local/state/clustral/agent-audit"},
		{"home", "", "", home + "/.local/state/clustral/agent-audit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("STATE_DIRECTORY", tt.state)
			t.Setenv("XDG_STATE_HOME", tt.xdg)
			t.Setenv("HOME", home)
			got, err := defaultAuditDir()
			want := tt.want
			if os.Geteuid() == 0 && tt.state == "" {
				want = "/var/lib/clustral/agent-audit"
			}
			if err != nil || got != want {
				t.Fatalf("defaultAuditDir() = %q, %v; want %q", got, err, want)
			}
			if strings.HasPrefix(got, os.TempDir()) {
				t.Fatalf("default %s is in the shared temporary directory", got)
			}
		})
	}
}

func TestAgentRegistrationRefused(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		status  int
		problem proto.Problem
		code    int
		stderr  []string
	}{
		{"bad join token", 401, proto.Problem{Title: "invalid join token", Detail: "the join token is not valid", Hint: "rotate it: clustral clusters rotate-token"},
			exitAuth, []string{"error: register agent: invalid join token: the join token is not valid\n", "hint: rotate it: clustral clusters rotate-token\n"}},
		{"forbidden", 403, proto.Problem{Title: "cluster deleted"}, exitDenied, []string{"error: register agent: cluster deleted\n"}},
		{"other refusal", 409, proto.Problem{Title: "conflict", Detail: "key in use"}, exitError, []string{"error: register agent: conflict: key in use\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			coord := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				if r.Method != "POST" || r.URL.Path != proto.APIVersion+"/agents" {
					http.NotFound(w, r)
					return
				}
				w.Header().Set("Content-Type", "application/problem+json")
				w.WriteHeader(tt.status)
				p := tt.problem
				p.Status = tt.status
				json.NewEncoder(w).Encode(p)
			}))
			defer coord.Close()
			code, _, stderr := runCLI(t, "agent", "--coordinator", coord.URL, "--join-token", "cjt_x", "--kubeconfig", kubeconfig,
				"--audit-dir", t.TempDir(), "--health-listen", "127.0.0.1:0", "--log-level", "error")
			if code != tt.code {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tt.code, stderr)
			}
			for _, want := range tt.stderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr %q lacks %q", stderr, want)
				}
			}
			if n := calls.Load(); n != 1 {
				t.Errorf("%d requests to the coordinator, want one registration: a refusal is not retried", n)
			}
		})
	}
}
