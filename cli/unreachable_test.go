package cli

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestUnreachableCoordinatorExit: a coordinator that cannot be reached
// ends every command with exit code 5 and the hint to check the URL,
// whichever call of the coordinator client failed.
func TestUnreachableCoordinatorExit(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	dead := srv.URL
	srv.Close()
	tmp := t.TempDir()
	for k, v := range map[string]string{"CLUSTRAL_CONFIG_DIR": tmp, "HOME": tmp, "XDG_CONFIG_HOME": tmp, "CLUSTRAL_PROFILE": "", "CLUSTRAL_CA_FILE": "", "NO_COLOR": "1"} {
		t.Setenv(k, v)
	}
	idToken := filepath.Join(tmp, "id-token")
	if err := os.WriteFile(idToken, []byte("x.y.z\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		path string
	}{
		{"login", []string{"login", dead, "--no-browser"}, "/api/v1/login/start"},
		{"login with an ID token", []string{"login", dead, "--id-token-file", idToken}, "/api/v1/login/token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, strings.NewReader(""), &stdout, &stderr)
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			wantErr := "error: reach coordinator " + dead + `: Post "` + dead + tt.path + `": `
			if code != exitUnreach || len(lines) != 2 || !strings.HasPrefix(lines[0], wantErr) ||
				lines[1] != "hint: check the URL and your network, or run: clustral doctor" {
				t.Errorf("exit %d, stderr:\n%s\nwant exit %d, %q… and the hint", code, stderr.String(), exitUnreach, wantErr)
			}
		})
	}
}
