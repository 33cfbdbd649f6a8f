package mesh

import (
	"context"
	"regexp"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestWatch: `kubectl get -w` through the mesh streams each event as it
// happens, without buffering.
func TestWatch(t *testing.T) {
	m := suite.NewMesh(t)
	suite.StartAgent(t, m.JoinToken)
	b := suite.NewUser(t, bob)
	b.MustLogin()
	m.Assign(t, bob.Email, "editor")
	b.MustUp()
	ns := suite.NewNamespace(t)

	w := b.StartKubectl(t, nil, nil, "get", "configmaps", "-n", ns, "-w", "--output-watch-events")
	for _, name := range []string{"first", "second", "third"} {
		start := time.Now()
		suite.CreateConfigMap(t, ns, name)
		w.WaitStdout(10*time.Second, "ADDED "+name, regexp.MustCompile(`(?m)^ADDED\s+`+name+`\s`).MatchString)
		t.Logf("%s seen %v after its creation", name, time.Since(start))
	}
	err := suite.Env.APIServer.Client().CoreV1().ConfigMaps(ns).Delete(context.Background(), "first", metav1.DeleteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.WaitStdout(10*time.Second, "DELETED first", regexp.MustCompile(`(?m)^DELETED\s+first\s`).MatchString)
}
