package access

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// TestStreamsCutOnRevoke: an open watch and an open port-forward end
// within 1s of the access that allowed them being revoked, for a static
// assignment and for a just-in-time grant.
func TestStreamsCutOnRevoke(t *testing.T) {
	kw := suite.KWOK(t)
	m := suite.NewMeshWithAgent(t)
	b := suite.NewUser(t, bob)
	b.MustLogin()
	b.MustUp()

	ctx := context.Background()
	ns, pod := suite.NewNamespace(t), "app"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "behind the pod")
	}))
	t.Cleanup(srv.Close)
	target, _ := url.Parse(srv.URL)
	tport, _ := strconv.Atoi(target.Port())
	if err := kw.SetPortForward(ctx, ns, pod, 8080, target.Hostname(), int32(tport)); err != nil {
		t.Fatal(err)
	}
	if _, err := kw.CreatePod(ctx, harness.FakePod(ns, pod, "c")); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		grant func(t *testing.T) (revoke func()) // gives bob editor
	}{
		{
			name: "assignment",
			grant: func(t *testing.T) func() {
				a := m.Assign(t, bob.Email, "editor")
				return func() { m.Admin.MustAPI("DELETE", "/api/v1/assignments/"+a.ID, nil, nil) }
			},
		},
		{
			name: "grant",
			grant: func(t *testing.T) func() {
				ar := requestAccess(b.For(t), "editor", "1h", "INC-2000")
				decide(m.Admin, "approve", ar.ID)
				return func() {
					m.Admin.MustAPI("POST", "/api/v1/access-requests/"+ar.ID+"/revoke", proto.AccessDecision{Reason: "done"}, nil)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			revoke := tt.grant(t)
			bt := b.For(t)
			// KWOK learns of the port-forward rule through a watch.
			harness.MustEventually(t, 20*time.Second, func(context.Context) error {
				_, err := bt.RunKubectl("get", "pod", pod, "-n", ns)
				return err
			})
			w := bt.StartKubectl(t, nil, nil, "get", "configmaps", "-n", ns, "-w", "--output-watch-events")
			suite.CreateConfigMap(t, ns, "before-"+tt.name)
			w.WaitContains(10*time.Second, "before-"+tt.name)

			var pf *harness.BackgroundKubectl
			harness.MustEventually(t, 20*time.Second, func(context.Context) error {
				if pf != nil {
					pf.Stop()
				}
				pf = bt.StartKubectl(t, nil, nil, "port-forward", "-n", ns, "pod/"+pod, ":8080")
				re := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 8080`)
				out := pf.WaitStdout(20*time.Second, "the forwarding address", re.MatchString)
				_, err := harness.HTTPGet("http://127.0.0.1:" + re.FindStringSubmatch(out)[1])
				return err
			})

			start := time.Now()
			revoke()
			var wg sync.WaitGroup
			for _, k := range []struct {
				what string
				k    *harness.BackgroundKubectl
			}{{"watch", w}, {"port-forward", pf}} {
				wg.Go(func() {
					err := k.k.WaitExit(10 * time.Second)
					took := time.Since(start)
					_, stderr := k.k.Output()
					t.Logf("%s ended %v after the revoke call: %v %s", k.what, took, err, harness.LastLines(stderr, 2))
					if took > time.Second {
						t.Errorf("%s ended %v after the revoke, want within 1s", k.what, took)
					}
				})
			}
			wg.Wait()
		})
	}
}
