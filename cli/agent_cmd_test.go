package main

import (
	"os"
	"strings"
	"testing"
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
