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
	_, b, _ := newUpUser(t, bob, "editor")
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
