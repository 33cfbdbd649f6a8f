// Package maketest serves the tests of the image and release programs:
// it runs the repository's make targets and checks the version a built
// binary reports.
package maketest

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Root returns the repository root, three directories above the test's
// package (integration/cmd/<program>).
func Root(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// Make runs make target in root with vars (NAME=value) and returns its
// combined output. It fails t with that output when make fails, and logs
// how long make took.
func Make(ctx context.Context, t testing.TB, root, target string, vars ...string) []byte {
	t.Helper()
	start := time.Now()
	mk := exec.CommandContext(ctx, "make", append([]string{"--no-print-directory", target}, vars...)...)
	mk.Dir = root
	out, err := mk.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", target, err, out)
	}
	t.Logf("make %s took %s", target, time.Since(start).Round(time.Second))
	return out
}

// CheckVersion runs bin, a clustral binary taken from where ("the image",
// "the archive"), as clustral version -o json and checks that it reports
// version, commit and platform.
func CheckVersion(t testing.TB, bin []byte, where, version, commit, platform string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "clustral")
	if err := os.WriteFile(path, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(path, "version", "-o", "json").Output()
	if err != nil {
		t.Fatalf("clustral version from %s: %v", where, err)
	}
	var v struct{ Version, Commit, Platform string }
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("clustral version -o json: %v\n%s", err, out)
	}
	if v.Version != version || v.Commit != commit || v.Platform != platform {
		t.Errorf("clustral version from %s: %+v, want %s, commit %s, %s", where, v, version, commit, platform)
	}
}
