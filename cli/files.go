package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/clustral/clustral/pkg/atomicfile"
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

// storedSession is the login kept on disk (0600).
type storedSession struct {
	Coordinator string        `json:"coordinator"`
	CAFile      string        `json:"ca_file,omitempty"`
	Session     proto.Session `json:"session"`
}

const sessionFile = "session.json"

func loadSession(dir string) (*storedSession, error) {
	var s storedSession
	err := atomicfile.ReadJSON(filepath.Join(dir, sessionFile), &s)
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
	if err := atomicfile.WriteJSON(accountPath(dir, s.Session.User.Login), s, 0o600); err != nil {
		return err
	}
	return atomicfile.WriteJSON(filepath.Join(dir, sessionFile), s, 0o600)
}
