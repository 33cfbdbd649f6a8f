package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
)

// Component versions, as built by components/build.sh.
const (
	EtcdVersion = "v3.7.3"
	KubeVersion = "v1.37.2"
	DexVersion  = "v2.45.1"
	KWOKVersion = "v0.8.0"
	HelmVersion = "v3.22.0"
	K9sVersion  = "v0.50.16"
)

var versions = map[string]string{
	"etcd":                    EtcdVersion,
	"kube-apiserver":          KubeVersion,
	"kube-controller-manager": KubeVersion,
	"dex":                     DexVersion,
	"kwok":                    KWOKVersion,
	"helm":                    HelmVersion,
	"k9s":                     K9sVersion,
}

// BinDir returns the directory holding the built components:
// $CLUSTRAL_TEST_BIN, else $XDG_CACHE_HOME/clustral/test-bin, else
// ~/.cache/clustral/test-bin (the same rule as components/build.sh).
func BinDir() string {
	if d := os.Getenv("CLUSTRAL_TEST_BIN"); d != "" {
		return d
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "clustral", "test-bin")
}

// BuildScript returns the path of components/build.sh in this checkout.
func BuildScript() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "components", "build.sh")
}

var buildMu sync.Mutex

// Binary returns the path of component name ("etcd", "kube-apiserver",
// "kube-controller-manager", "dex", "kwok", "helm" or "k9s"). If it is missing it runs
// components/build.sh once (under a file lock, so concurrent test binaries
// do not build twice); the first build takes several minutes.
func Binary(name string) (string, error) {
	v, ok := versions[name]
	if !ok {
		return "", fmt.Errorf("unknown component %q", name)
	}
	path := filepath.Join(BinDir(), name+"-"+v, name)
	if isExec(path) {
		return path, nil
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if isExec(path) {
		return path, nil
	}
	script := BuildScript()
	if err := os.MkdirAll(BinDir(), 0o755); err != nil {
		return "", fmt.Errorf("component %s missing and cannot create %s: %w", name, BinDir(), err)
	}
	lock, err := os.OpenFile(filepath.Join(BinDir(), ".build.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("component %s missing: lock: %w (build it with %s)", name, err, script)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("component %s missing: lock: %w (build it with %s)", name, err, script)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if isExec(path) {
		return path, nil
	}
	fmt.Fprintf(os.Stderr, "harness: %s missing; running %s (one time, several minutes)\n", path, script)
	cmd := exec.Command("bash", script)
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("component %s missing at %s and %s failed: %w (run it by hand to see why)", name, path, script, err)
	}
	if !isExec(path) {
		return "", fmt.Errorf("component %s still missing at %s after %s", name, path, script)
	}
	return path, nil
}

func isExec(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
