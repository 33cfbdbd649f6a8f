package version

import (
	"runtime"
	"strings"
	"testing"
)

func TestGet(t *testing.T) {
	old := Version
	oldCommit := Commit
	t.Cleanup(func() { Version, Commit = old, oldCommit })
	Version, Commit = "v9.9.9", "abc123"
	i := Get()
	if i.Version != "v9.9.9" || i.Commit != "abc123" || i.GoVersion != runtime.Version() {
		t.Fatalf("Get() = %+v", i)
	}
	for _, want := range []string{"v9.9.9", "abc123", runtime.Version()} {
		if !strings.Contains(i.String(), want) {
			t.Errorf("String() = %q, missing %q", i.String(), want)
		}
	}
}
