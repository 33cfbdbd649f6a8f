package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/clustral/clustral/proto"
)

// profileDir returns the directory of the active profile's files:
// $XDG_CONFIG_HOME/clustral/profiles/<profile> (os.UserConfigDir). The
// CLUSTRAL_CONFIG_DIR environment variable overrides the base.
func profileDir(profile string) (string, error) {
	base, err := configBase()
	if err != nil {
		return "", err
	}
	if profile == "" {
		profile = "default"
	}
	return filepath.Join(base, "profiles", profile), nil
}

// configBase returns the directory above the profiles:
// $XDG_CONFIG_HOME/clustral, or CLUSTRAL_CONFIG_DIR when set.
func configBase() (string, error) {
	if base := os.Getenv("CLUSTRAL_CONFIG_DIR"); base != "" {
		return base, nil
	}
	d, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find the config directory: %w (set XDG_CONFIG_HOME or CLUSTRAL_CONFIG_DIR)", err)
	}
	return filepath.Join(d, "clustral"), nil
}

// writeFileAtomic writes data to path with mode perm through a temporary
// file and a rename, so readers never see a partial file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
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
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func writeJSONFile(path string, v any, perm os.FileMode) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'), perm)
}

func readJSONFile(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s is corrupt: %w (remove it and log in again)", path, err)
	}
	return nil
}

// storedSession is the login kept on disk (0600).
type storedSession struct {
	Coordinator string        `json:"coordinator"`
	CAFile      string        `json:"ca_file,omitempty"`
	Session     proto.Session `json:"session"`
}

const sessionFile = "session.json"

func loadSession(dir string) (*storedSession, error) {
	var s storedSession
	err := readJSONFile(filepath.Join(dir, sessionFile), &s)
	if errors.Is(err, os.ErrNotExist) {
		return nil, withHint(exitAuth, errors.New("not logged in"), "run: clustral login <coordinator-url>")
	}
	if err != nil {
		return nil, err
	}
	if !s.Session.ExpiresAt.IsZero() && now().After(s.Session.ExpiresAt) {
		return &s, withHint(exitAuth, fmt.Errorf("your session for %s %w at %s", s.Coordinator, errSessionExpired, s.Session.ExpiresAt.Local().Format(time.Kitchen)), "run: clustral login "+s.Coordinator)
	}
	return &s, nil
}

// errSessionExpired marks an error caused by an expired stored session.
var errSessionExpired = errors.New("expired")

// saveSession makes s the profile's active session (session.json) and
// keeps a copy among the profile's accounts (sessions/<login>.json).
func saveSession(dir string, s *storedSession) error {
	if err := writeJSONFile(accountPath(dir, s.Session.User.Login), s, 0o600); err != nil {
		return err
	}
	return writeJSONFile(filepath.Join(dir, sessionFile), s, 0o600)
}
