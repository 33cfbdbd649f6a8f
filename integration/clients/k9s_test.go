package clients

import (
	"context"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/clustral/clustral/integration/harness"
)

// TestK9s: a viewer runs k9s in a terminal against the mesh context; it
// lists the pods of a namespace and follows a pod's log as the pod writes
// to it. It does so for a role limited to that namespace too, for which
// the agent must let through the access reviews k9s asks before it opens
// any view.
func TestK9s(t *testing.T) {
	kw := suite.KWOK(t)
	for _, tt := range []struct {
		name    string
		limited bool // the role is limited to the pod's namespace
	}{
		{"viewer", false},
		{"viewer limited to the namespace", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, ns, b := upWithRole(t, bob, harness.ViewerRole, tt.limited)
			pod := "web-7f9c"

			ctx := context.Background()
			logFile := filepath.Join(t.TempDir(), "app.log")
			if err := harness.WriteCRILog(logFile, "first line from the pod"); err != nil {
				t.Fatal(err)
			}
			if err := kw.SetLogs(ctx, ns, pod, logFile, true); err != nil {
				t.Fatal(err)
			}
			if _, err := kw.CreatePod(ctx, harness.FakePod(ns, pod, "app")); err != nil {
				t.Fatal(err)
			}
			// KWOK learns of the logs rule through a watch: wait until it
			// serves the log, so that k9s's first request finds it.
			harness.MustEventually(t, 20*time.Second, func(context.Context) error {
				_, err := b.RunKubectl("logs", "-n", ns, pod)
				return err
			})

			k := b.StartK9s(t, harness.K9sOptions{Namespace: ns, Command: "pods"})
			k.WaitScreen(time.Minute, "pod "+pod+" listed as Running", regexp.MustCompile(`(?m)\b`+pod+`\b.*\bRunning\b`).MatchString)

			// The only pod is selected: open its log, which k9s follows.
			k.Keys("l")
			k.WaitContains(30*time.Second, "first line from the pod")
			if err := harness.AppendCRILog(logFile, "second line, written while k9s follows"); err != nil {
				t.Fatal(err)
			}
			k.WaitContains(30*time.Second, "second line, written while k9s follows")
		})
	}
}
