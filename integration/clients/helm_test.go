package clients

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustral/clustral/integration/harness"
)

// helmRelease is one entry of `helm list -o json`.
type helmRelease struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Revision  string `json:"revision"`
	Status    string `json:"status"`
	Chart     string `json:"chart"`
}

// TestHelm: an editor installs, lists, upgrades and uninstalls the chart
// in testdata/demo with helm through the mesh context, and the apiserver
// holds exactly what helm said it did at each step; so does an editor
// whose role is limited to the release's namespace.
func TestHelm(t *testing.T) {
	for _, tt := range []struct {
		name    string
		limited bool // the role is limited to the release's namespace
	}{
		{"editor", false},
		{"editor limited to the namespace", true},
	} {
		t.Run(tt.name, func(t *testing.T) { testHelm(t, tt.limited) })
	}
}

func testHelm(t *testing.T, limited bool) {
	m, ns, a := upWithRole(t, alice, harness.EditorRole, limited)
	chart, err := filepath.Abs(filepath.Join("testdata", "demo"))
	if err != nil {
		t.Fatal(err)
	}
	h := a.Helm()
	helm := func(args ...string) string {
		t.Helper()
		res, err := h.Run(context.Background(), args...)
		if err != nil {
			t.Fatal(err)
		}
		return res.Stdout
	}
	list := func() []helmRelease {
		t.Helper()
		var rs []helmRelease
		out := helm("list", "-n", ns, "-o", "json")
		if err := json.Unmarshal([]byte(out), &rs); err != nil {
			t.Fatalf("helm list -o json: %v\n%s", err, out)
		}
		return rs
	}
	c := suite.Env.APIServer.Client()
	ctx := context.Background()
	// objects checks the release's objects as the apiserver's admin
	// sees them.
	objects := func(message string, replicas int32) {
		t.Helper()
		cm, err := c.CoreV1().ConfigMaps(ns).Get(ctx, "web-config", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := cm.Data["message"]; got != message {
			t.Errorf("configmap web-config message = %q, want %q", got, message)
		}
		d, err := c.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if d.Spec.Replicas == nil || *d.Spec.Replicas != replicas {
			t.Errorf("deployment web replicas = %v, want %d", d.Spec.Replicas, replicas)
		}
	}

	// helm's requests carry the mesh identity: a viewer's install is
	// refused by the apiserver, naming the viewer.
	b := suite.NewUser(t, bob)
	b.MustLogin()
	m.Assign(t, bob.Email, "viewer")
	b.MustUp()
	res, err := b.Helm().Run(ctx, "install", "web", chart, "-n", ns)
	if err == nil {
		t.Fatalf("a viewer's helm install succeeded:\n%s", res.Stdout)
	}
	if !strings.Contains(res.Stderr, "forbidden") || !strings.Contains(res.Stderr, bob.Email) {
		t.Fatalf("a viewer's helm install failed, but not as forbidden for %s: %v", bob.Email, err)
	}

	out := helm("install", "web", chart, "-n", ns)
	for _, want := range []string{"NAME: web", "STATUS: deployed", "REVISION: 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("helm install output lacks %q:\n%s", want, out)
		}
	}
	objects("hello", 1)
	want := helmRelease{Name: "web", Namespace: ns, Revision: "1", Status: "deployed", Chart: "demo-0.1.0"}
	if rs := list(); len(rs) != 1 || rs[0] != want {
		t.Fatalf("helm list after install = %+v, want [%+v]", rs, want)
	}

	out = helm("upgrade", "web", chart, "-n", ns, "--set", "message=bye", "--set", "replicas=2")
	if !strings.Contains(out, "REVISION: 2") {
		t.Errorf("helm upgrade output lacks REVISION: 2:\n%s", out)
	}
	objects("bye", 2)
	want.Revision = "2"
	if rs := list(); len(rs) != 1 || rs[0] != want {
		t.Fatalf("helm list after upgrade = %+v, want [%+v]", rs, want)
	}
	// Helm keeps one release secret per revision.
	secrets, err := c.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: "owner=helm,name=web"})
	if err != nil {
		t.Fatal(err)
	}
	if len(secrets.Items) != 2 {
		t.Errorf("%d helm release secrets after the upgrade, want 2", len(secrets.Items))
	}

	out = helm("uninstall", "web", "-n", ns)
	if !strings.Contains(out, `release "web" uninstalled`) {
		t.Errorf("helm uninstall output: %s", out)
	}
	if rs := list(); len(rs) != 0 {
		t.Fatalf("helm list after uninstall = %+v, want none", rs)
	}
	// Deletion is asynchronous for the apiserver's garbage collector only
	// (dependents); the objects themselves go at once, but poll anyway in
	// case a finalizer is added by some admission plugin.
	harness.MustEventually(t, 30*time.Second, func(ctx context.Context) error {
		if _, err := c.CoreV1().ConfigMaps(ns).Get(ctx, "web-config", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("configmap web-config still there (%v)", err)
		}
		if _, err := c.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("deployment web still there (%v)", err)
		}
		s, err := c.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: "owner=helm,name=web"})
		if err != nil || len(s.Items) != 0 {
			return fmt.Errorf("helm release secrets still there (%v)", err)
		}
		return nil
	})
}
