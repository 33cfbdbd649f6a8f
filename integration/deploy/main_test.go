// Package deploy tests the shipping artifacts in deploy/: the agent's
// kustomize base against a real kube-apiserver (server-side dry run, the
// impersonate-only RBAC judged by the apiserver, the restricted Pod
// Security Standard), the coordinator's systemd unit and example
// configuration against the real clustral binary, the Dockerfile, and the
// agent's Helm chart (lint, template, server dry run, install, and the
// same RBAC matrix and hardening as the kustomize base).
package deploy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/clustral/clustral/integration/harness"
)

var (
	env  *harness.Env
	root string // the repository root
)

func TestMain(m *testing.M) {
	r, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		panic(err)
	}
	root = r
	// Nothing here needs a controller: the DaemonSet is never scheduled,
	// and the test that needs the built-in ClusterRoles starts one itself.
	// Dex lets the tests log in to a real coordinator.
	opts := harness.Options{
		SkipControllerManager: true,
		Dex: &harness.DexOptions{
			Users:   []harness.DexUser{admin, alice},
			Clients: []harness.DexClient{{ID: oidcClient, Secret: oidcSecret, RedirectURIs: []string{"http://127.0.0.1/oidc/callback"}}},
		},
	}
	code := harness.Main(m, opts, func(e *harness.Env) { env = e })
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// repoPath returns the absolute path of a file in the repository.
func repoPath(elem ...string) string {
	return filepath.Join(append([]string{root}, elem...)...)
}

// kubectl runs kubectl as the apiserver's admin and fails t on error.
func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	res, err := kubectlRun(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return res.Stdout
}

func kubectlRun(t *testing.T, args ...string) (harness.KubectlResult, error) {
	t.Helper()
	return kubectlRunner(t).Run(t.Context(), args...)
}

// kustomize renders a kustomization directory. It needs no apiserver.
func kustomize(t *testing.T, dir string) []byte {
	t.Helper()
	res, err := harness.Kubectl{}.Run(t.Context(), "kustomize", dir)
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v", dir, err)
	}
	return []byte(res.Stdout)
}

// object is one document of a multi-document manifest: its kind and name,
// and its raw YAML for strict decoding into a typed object.
type object struct {
	APIVersion string
	Kind       string
	Namespace  string
	Name       string
	raw        []byte
}

// decode decodes o into v, failing t on any field v does not know, so a
// misspelt field in a manifest is an error rather than silently dropped.
func (o object) decode(t *testing.T, v any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(o.raw, v); err != nil {
		t.Fatalf("%s %s: %v", o.Kind, o.Name, err)
	}
}

func parseObjects(t *testing.T, manifest []byte) []object {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifest)))
	var objs []object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("split manifest: %v", err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("parse manifest document: %v\n%s", err, doc)
		}
		objs = append(objs, object{
			APIVersion: meta.APIVersion, Kind: meta.Kind,
			Namespace: meta.Metadata.Namespace, Name: meta.Metadata.Name, raw: doc,
		})
	}
	return objs
}

// find returns the only object of kind in objs.
func find(t *testing.T, objs []object, kind string) object {
	t.Helper()
	var found []object
	for _, o := range objs {
		if o.Kind == kind {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("manifest has %d objects of kind %s, want 1", len(found), kind)
	}
	return found[0]
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

// clustral returns the clustral binary ($CLUSTRAL_BIN, or built once from
// the repository). It skips t when the command does not build, so the
// manifests are still tested while cli/ is being changed.
func clustral(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binPath, binErr = harness.TempClustral("clustral-deploy-bin-")
	})
	if binErr != nil {
		t.Skipf("no clustral binary to check against (set CLUSTRAL_BIN or fix the build): %v", binErr)
	}
	return binPath
}

// helpFlags runs `clustral <cmd> --help` and returns the long names of
// the command's own flags and of the inherited global flags.
func helpFlags(t *testing.T, cmd string) (local, global map[string]bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, clustral(t), cmd, "--help")
	c.Env = cleanEnv()
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("clustral %s --help: %v\n%s", cmd, err, out)
	}
	flagLine := regexp.MustCompile(`^\s+(?:-\w, )?--([a-z0-9][a-z0-9-]*)`)
	local, global = map[string]bool{}, map[string]bool{}
	var cur map[string]bool
	for line := range strings.Lines(string(out)) {
		switch strings.TrimSpace(line) {
		case "Flags:":
			cur = local
			continue
		case "Global Flags:":
			cur = global
			continue
		}
		if cur == nil {
			continue
		}
		if m := flagLine.FindStringSubmatch(line); m != nil {
			cur[m[1]] = true
		} else if strings.TrimSpace(line) != "" && !strings.HasPrefix(line, " ") {
			cur = nil // the next section
		}
	}
	if len(local) == 0 {
		t.Fatalf("no flags found in `clustral %s --help`:\n%s", cmd, out)
	}
	return local, global
}

// cleanEnv is the environment without CLUSTRAL_* settings, which would
// override the configuration under test.
func cleanEnv() []string {
	var e []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CLUSTRAL_") {
			e = append(e, kv)
		}
	}
	return e
}

// kubectlRunner is kubectl as the apiserver's admin.
func kubectlRunner(t *testing.T) harness.Kubectl {
	t.Helper()
	return harness.Kubectl{Kubeconfig: env.APIServer.Kubeconfig}
}

// harnessKubectl is kubectl without a cluster, for kustomize.
func harnessKubectl() harness.Kubectl { return harness.Kubectl{} }
