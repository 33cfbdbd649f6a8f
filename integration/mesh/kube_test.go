package mesh

import (
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

// TestKubeLogoutLogin: with a running `clustral up`, kube logout removes
// one context and kube login brings it back, without down/up.
func TestKubeLogoutLogin(t *testing.T) {
	_, a, _ := newUpUser(t, alice, "viewer")
	hasContext := func() bool {
		t.Helper()
		cfg, err := clientcmd.LoadFromFile(a.Kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		return cfg.Contexts["clustral-kind"] != nil
	}
	if !hasContext() {
		t.Fatal("no clustral-kind context after up")
	}
	if out := a.MustRun("kube", "ls"); !strings.Contains(out, "kind") || !strings.Contains(out, "viewer") {
		t.Fatalf("kube ls = %q", out)
	}
	a.MustRun("kube", "logout", "kind")
	if hasContext() {
		t.Fatal("clustral-kind context still there after kube logout")
	}
	a.MustRun("kube", "login", "kind")
	if !hasContext() {
		t.Fatal("no clustral-kind context after kube login")
	}
	if res, err := a.RunKubectl("auth", "whoami"); err != nil || !strings.Contains(res.Stdout, alice.Email) {
		t.Fatalf("kubectl after kube login: %v %s", err, res.Stdout)
	}
}
