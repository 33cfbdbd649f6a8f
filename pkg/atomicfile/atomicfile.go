// Package atomicfile writes files whole: through a temporary file in the
// same directory and a rename, so a reader sees the old content or the
// new, never a partial file. The CLI keeps its profile files with it.
package atomicfile

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// Option changes how Write and WriteJSON write.
type Option int

// NoSync writes the file whole for every reader, as always, but does not
// wait for the disk before the rename: for a file that describes a
// running process and is removed when it ends (clustral up's state and
// device key), which a crash of the machine makes moot with the process.
// A sync costs milliseconds, more on a busy disk.
const NoSync Option = 1

// Write writes data to path with mode perm, creating the directory (0700)
// if needed. The data is synced to disk before the rename, unless NoSync.
func Write(path string, data []byte, perm os.FileMode, opts ...Option) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if !slices.Contains(opts, NoSync) {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// WriteJSON writes v to path as indented JSON with a final newline, as
// Write does.
func WriteJSON(path string, v any, perm os.FileMode, opts ...Option) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return Write(path, append(b, '\n'), perm, opts...)
}

// ReadJSON decodes the JSON file at path into v. A file that does not
// decode is reported as corrupt, naming the file and the fix.
func ReadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s is corrupt: %w (remove it and log in again)", path, err)
	}
	return nil
}
