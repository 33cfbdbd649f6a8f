// Package version reports the build's version, set at link time with
// -ldflags "-X github.com/clustral/clustral/pkg/version.Version=v1.2.3
// -X github.com/clustral/clustral/pkg/version.Commit=abc123".
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set at link time; see the Makefile.
var (
	Version = "dev"
	Commit  = ""
)

// Info is the version of a clustral build.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

// Get returns this binary's version. When Commit was not set at link time
// it falls back to the VCS revision Go embedded, if any.
func Get() Info {
	commit := Commit
	if commit == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					commit = s.Value
				}
			}
		}
	}
	if commit == "" {
		commit = "unknown"
	}
	return Info{
		Version:   Version,
		Commit:    commit,
		GoVersion: runtime.Version(),
		Platform:  runtime.GOOS + "/" + runtime.GOARCH,
	}
}

// String returns a one-line description.
func (i Info) String() string {
	return fmt.Sprintf("clustral %s (commit %s, %s, %s)", i.Version, i.Commit, i.GoVersion, i.Platform)
}
