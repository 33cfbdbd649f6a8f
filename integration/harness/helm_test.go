package harness

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestHelmCommandLine(t *testing.T) {
	tests := []struct {
		name string
		h    Helm
		want []string
	}{
		{name: "no flags", h: Helm{Dir: "d"}, want: []string{"list"}},
		{name: "kubeconfig and context", h: Helm{Dir: "d", Kubeconfig: "kc", Context: "ctx"}, want: []string{"--kubeconfig=kc", "--kube-context=ctx", "list"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.h.commandLine([]string{"list"}); !slices.Equal(got, tt.want) {
				t.Errorf("commandLine = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestHelmEnviron: helm never sees the developer's $KUBECONFIG or $HELM_*
// settings, and keeps its files under Dir.
func TestHelmEnviron(t *testing.T) {
	t.Setenv("KUBECONFIG", "/developer/kubeconfig")
	t.Setenv("HELM_CONFIG_HOME", "/developer/helm")
	t.Setenv("HELM_DRIVER", "sql")
	dir := t.TempDir()
	env, err := Helm{Dir: dir, Env: []string{"EXTRA=1"}}.environ()
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range env {
		if strings.Contains(kv, "/developer/") || kv == "HELM_DRIVER=sql" {
			t.Errorf("helm's environment keeps %s", kv)
		}
	}
	for _, want := range []string{
		"HELM_CONFIG_HOME=" + filepath.Join(dir, "config"),
		"HELM_CACHE_HOME=" + filepath.Join(dir, "cache"),
		"HELM_DATA_HOME=" + filepath.Join(dir, "data"),
		"EXTRA=1",
	} {
		if !slices.Contains(env, want) {
			t.Errorf("helm's environment lacks %s", want)
		}
	}
}

func TestHelmWithoutDir(t *testing.T) {
	_, err := Helm{}.Run(t.Context(), "version")
	if err == nil || !strings.Contains(err.Error(), "Helm.Dir") {
		t.Fatalf("err = %v, want one naming Helm.Dir", err)
	}
}
