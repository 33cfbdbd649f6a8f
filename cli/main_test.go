package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

// runCLI runs the CLI in-process and returns its exit code and output.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestVersion(t *testing.T) {
	tests := []struct {
		args     []string
		wantCode int
		check    func(t *testing.T, stdout, stderr string)
	}{
		{[]string{"version"}, 0, func(t *testing.T, out, _ string) {
			if !strings.HasPrefix(out, "clustral ") || !strings.Contains(out, "go1.") {
				t.Errorf("stdout = %q", out)
			}
		}},
		{[]string{"version", "-o", "json"}, 0, func(t *testing.T, out, _ string) {
			var v map[string]string
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				t.Fatalf("not JSON: %v: %q", err, out)
			}
			for _, k := range []string{"version", "commit", "go_version"} {
				if v[k] == "" {
					t.Errorf("missing %q in %v", k, v)
				}
			}
		}},
		{[]string{"version", "-o", "xml"}, exitUsage, func(t *testing.T, _, errb string) {
			if !strings.Contains(errb, `unknown output format "xml"`) {
				t.Errorf("stderr = %q", errb)
			}
		}},
		{[]string{"version", "--bogus"}, exitUsage, func(t *testing.T, _, errb string) {
			if !strings.Contains(errb, "unknown flag") {
				t.Errorf("stderr = %q", errb)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errb := runCLI(t, tt.args...)
			if code != tt.wantCode {
				t.Fatalf("exit = %d, want %d; stderr=%q", code, tt.wantCode, errb)
			}
			tt.check(t, out, errb)
		})
	}
}
