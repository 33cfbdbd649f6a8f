package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWrite: with or without NoSync the file holds the data whole, with
// the mode asked for, replacing what was there, and no temporary file is
// left beside it.
func TestWrite(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts []Option
	}{{"synced", nil}, {"NoSync", []Option{NoSync}}} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "sub", "state.json")
			if err := Write(path, []byte("old"), 0o644, tt.opts...); err != nil {
				t.Fatal(err)
			}
			if err := WriteJSON(path, map[string]int{"a": 1}, 0o600, tt.opts...); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if want := "{\n  \"a\": 1\n}\n"; string(b) != want {
				t.Errorf("content %q, want %q", b, want)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("mode %04o, want 0600", fi.Mode().Perm())
			}
			if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
				t.Errorf("%d files in the directory, want only the one written", len(ents))
			}
		})
	}
}
