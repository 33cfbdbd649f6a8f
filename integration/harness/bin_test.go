package harness

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// TestComponentVersions: build.sh builds the versions the harness looks
// for, and the wrapper modules of the clients require those versions, so
// a version bump in one place cannot leave the tests running another.
func TestComponentVersions(t *testing.T) {
	script, err := os.ReadFile(BuildScript())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		variable, component string
		module, path        string // the wrapper module's requirement; "" if none to check
	}{
		{"ETCD_VERSION", "etcd", "etcd", "go.etcd.io/etcd/server/v3"},
		{"KUBE_VERSION", "kube-apiserver", "kube", "k8s.io/kubernetes"},
		{"KUBE_VERSION", "kube-controller-manager", "", ""},
		{"DEX_VERSION", "dex", "", ""},
		{"KWOK_VERSION", "kwok", "", ""},
		{"HELM_VERSION", "helm", "helm", "helm.sh/helm/v3"},
		{"K9S_VERSION", "k9s", "k9s", "github.com/derailed/k9s"},
	} {
		t.Run(tt.component, func(t *testing.T) {
			m := regexp.MustCompile(`(?m)^` + tt.variable + `=(\S+)$`).FindSubmatch(script)
			if m == nil {
				t.Fatalf("build.sh sets no %s", tt.variable)
			}
			if got, want := string(m[1]), versions[tt.component]; got != want {
				t.Errorf("build.sh builds %s %s, the harness looks for %s", tt.component, got, want)
			}
			if tt.module == "" {
				return
			}
			gomod := filepath.Join(filepath.Dir(BuildScript()), tt.module, "go.mod")
			b, err := os.ReadFile(gomod)
			if err != nil {
				t.Fatal(err)
			}
			// go mod tidy writes one requirement per line, "path version".
			req := regexp.MustCompile(`(?m)^\s*(?:require\s+)?` + regexp.QuoteMeta(tt.path) + `\s+(\S+)`).FindSubmatch(b)
			if req == nil {
				t.Fatalf("%s does not require %s", gomod, tt.path)
			}
			if string(req[1]) != string(m[1]) {
				t.Errorf("%s requires %s %s, build.sh says %s", gomod, tt.path, req[1], m[1])
			}
		})
	}
}
