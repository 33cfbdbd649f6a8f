package cli

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/clustral/clustral/agent"
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

func TestAgentErrorExitCodes(t *testing.T) {
	refused := func(status int) error {
		return fmt.Errorf("register agent: %w", &agent.CoordinatorError{Problem: proto.Problem{Status: status, Title: "refused", Hint: "fix it"}})
	}
	unreachable := fmt.Errorf("register agent: reach coordinator https://c: %w", &url.Error{Op: "Post", URL: "https://c", Err: errors.New("connection refused")})
	tests := []struct {
		name     string
		err      error
		code     int
		hint     string
		wrapped  bool
		wantText string
	}{
		{"bad join token", refused(401), exitAuth, "fix it", true, "register agent: refused"},
		{"forbidden", refused(403), exitDenied, "fix it", true, "register agent: refused"},
		{"other refusal", refused(409), exitError, "fix it", true, "register agent: refused"},
		{"unreachable", unreachable, exitUnreach, "check the URL and your network, or run: clustral doctor", true, "register agent: reach coordinator https://c"},
		{"anything else", errors.New("health listener: address in use"), 0, "", false, "health listener: address in use"},
		{"nil", nil, 0, "", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := agentError(tt.err)
			if tt.err == nil {
				if err != nil {
					t.Fatalf("agentError(nil) = %v", err)
				}
				return
			}
			if !strings.HasPrefix(err.Error(), tt.wantText) {
				t.Errorf("message %q, want it to start with %q", err, tt.wantText)
			}
			var ce *cliError
			if errors.As(err, &ce) != tt.wrapped {
				t.Fatalf("agentError(%v) = %#v, want a cliError: %v", tt.err, err, tt.wrapped)
			}
			if tt.wrapped && (ce.code != tt.code || ce.hint != tt.hint) {
				t.Errorf("exit code %d hint %q, want %d %q", ce.code, ce.hint, tt.code, tt.hint)
			}
		})
	}
}
