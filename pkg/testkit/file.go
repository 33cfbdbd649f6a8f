package testkit

import (
	"io/fs"
	"os"
	"testing"
)

// CheckPerm fails tb unless what (a name for the message, e.g. "backup")
// is a file at path with the permission bits perm.
func CheckPerm(tb testing.TB, what, path string, perm fs.FileMode) {
	tb.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatalf("%s: %v", what, err)
	}
	if got := fi.Mode().Perm(); got != perm {
		tb.Errorf("%s mode = %v, want %v", what, got, perm)
	}
}
