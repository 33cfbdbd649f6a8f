package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Helm runs the helm built by components/build.sh (see Binary). helm keeps
// its configuration, cache and data (repositories, plugins, registry
// logins) under Dir, so a developer's helm setup is never read or touched,
// and $KUBECONFIG and $HELM_* are always dropped from its environment.
type Helm struct {
	// Dir holds helm's configuration, cache and data; it must be set,
	// e.g. to a t.TempDir().
	Dir string
	// Kubeconfig is passed as --kubeconfig when set.
	Kubeconfig string
	// Context is passed as --kube-context when set.
	Context string
	// Env is appended to the environment (KEY=value).
	Env []string
	// Timeout bounds each Run; zero means two minutes.
	Timeout time.Duration
}

// Run runs helm with args and captures its output. The error is a
// *KubectlError with Program "helm" if helm ran but failed. helm runs in
// its own process group, killed when it exits, on timeout or when ctx is
// done.
func (h Helm) Run(ctx context.Context, args ...string) (KubectlResult, error) {
	if h.Dir == "" {
		return KubectlResult{ExitCode: -1}, errors.New("helm: Helm.Dir is empty; set it to a directory of the test's (t.TempDir())")
	}
	path, err := Binary("helm")
	if err != nil {
		return KubectlResult{ExitCode: -1}, err
	}
	env, err := h.environ()
	if err != nil {
		return KubectlResult{ExitCode: -1}, err
	}
	timeout := h.Timeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	return runClient(ctx, "helm", path, h.commandLine(args), env, nil, timeout)
}

// environ returns helm's environment: this process's without $KUBECONFIG
// and $HELM_*, helm's directories under h.Dir, then h.Env.
func (h Helm) environ() ([]string, error) {
	env := EnvironWithout("KUBECONFIG=", "HELM_")
	for _, d := range []struct{ name, dir string }{
		{"HELM_CONFIG_HOME", "config"}, {"HELM_CACHE_HOME", "cache"}, {"HELM_DATA_HOME", "data"},
	} {
		p := filepath.Join(h.Dir, d.dir)
		if err := os.MkdirAll(p, 0o700); err != nil {
			return nil, fmt.Errorf("helm: %w", err)
		}
		env = append(env, d.name+"="+p)
	}
	return append(env, h.Env...), nil
}

// commandLine returns helm's arguments: h's flags, then args.
func (h Helm) commandLine(args []string) []string {
	return kubeArgs(h.Kubeconfig, "--kube-context", h.Context, args)
}
