package device

import (
	"path/filepath"
	"slices"

	"github.com/clustral/clustral/pkg/atomicfile"
)

// KubePrefsFile (in the profile directory) lists the clusters whose
// kubeconfig context the user removed with clustral kube logout. A running
// device honours it on every change and owns it while it runs; the CLI
// edits it itself only when no device runs.
const KubePrefsFile = "kube.json"

type kubePrefs struct {
	Excluded []string `json:"excluded,omitempty"`
}

// Excluded returns the clusters excluded in the profile directory dir.
func Excluded(dir string) []string {
	var p kubePrefs
	_ = atomicfile.ReadJSON(filepath.Join(dir, KubePrefsFile), &p)
	return p.Excluded
}

// SetExcluded adds cluster to the excluded list, or removes it.
func SetExcluded(dir, cluster string, exclude bool) error {
	p := kubePrefs{Excluded: Excluded(dir)}
	has := slices.Contains(p.Excluded, cluster)
	switch {
	case exclude && !has:
		p.Excluded = append(p.Excluded, cluster)
		slices.Sort(p.Excluded)
	case !exclude && has:
		p.Excluded = slices.DeleteFunc(p.Excluded, func(c string) bool { return c == cluster })
	default:
		return nil
	}
	return atomicfile.WriteJSON(filepath.Join(dir, KubePrefsFile), p, 0o600)
}
