package testkit

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
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

// Golden fails tb unless the file at path holds got. With update it
// writes got there first (making its directory). Both failures say to
// run regenerate, the command that rewrites the file; a difference shows
// got and the file.
func Golden(tb testing.TB, path string, got []byte, update bool, regenerate string) {
	tb.Helper()
	if update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("%v (run: %s)", err, regenerate)
	}
	if !bytes.Equal(got, want) {
		tb.Errorf("%s is out of date; run: %s\n--- got\n%s\n--- want\n%s", path, regenerate, got, want)
	}
}
