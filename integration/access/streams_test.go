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

// kwok starts KWOK once for the package; the Env stops it.
var kwok = sync.OnceValues(func() (*harness.KWOK, error) {
	return env.StartKWOK(context.Background())
})

// TestStreamsCutOnRevoke: an open watch and an open port-forward end
// within 1s of the access that allowed them being revoked, for a static
// assignment and for a just-in-time grant.
func TestStreamsCutOnRevoke(t *testing.T) {
	kw, err := kwok()
	if err != nil {
		t.Fatal(err)
	}
	m := newMesh(t)
	startAgent(t, m.joinToken)
	b := newUser(t, bob)
	b.login()
	b.up()

	ctx := context.Background()
	ns, pod := newNamespace(t), "app"
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
				a := m.assign(t, bob.Email, "editor")
				return func() { m.admin.api("DELETE", "/api/v1/assignments/"+a.ID, nil, nil) }
			},
		},
		{
			name: "grant",
			grant: func(t *testing.T) func() {
				ar := (&user{User: b.User, t: t}).request("editor", "1h", "INC-2000")
				m.admin.decide("approve", ar.ID)
				return func() {
					m.admin.api("POST", "/api/v1/access-requests/"+ar.ID+"/revoke", proto.AccessDecision{Reason: "done"}, nil)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			revoke := tt.grant(t)
			bt := &user{User: b.User, t: t}
			// KWOK learns of the port-forward rule through a watch.
			eventually(t, 20*time.Second, func(context.Context) error {
				_, err := bt.kubectl("get", "pod", pod, "-n", ns)
				return err
			})
			w := bt.startKubectl(t, nil, nil, "get", "configmaps", "-n", ns, "-w", "--output-watch-events")
			createConfigMap(t, ns, "before-"+tt.name)
			w.waitContains(10*time.Second, "before-"+tt.name)

			var pf *bgKubectl
			eventually(t, 20*time.Second, func(context.Context) error {
				if pf != nil {
					pf.stop()
				}
				pf = bt.startKubectl(t, nil, nil, "port-forward", "-n", ns, "pod/"+pod, ":8080")
				re := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 8080`)
				out := pf.waitStdout(20*time.Second, "the forwarding address", re.MatchString)
				_, err := httpGet("http://127.0.0.1:" + re.FindStringSubmatch(out)[1])
				return err
			})

			start := time.Now()
			revoke()
			var wg sync.WaitGroup
			for _, k := range []struct {
				what string
				k    *bgKubectl
			}{{"watch", w}, {"port-forward", pf}} {
				wg.Go(func() {
					err := k.k.waitExit(10 * time.Second)
					took := time.Since(start)
					_, stderr := k.k.output()
					t.Logf("%s ended %v after the revoke call: %v %s", k.what, took, err, lastLines(stderr, 2))
					if took > time.Second {
						t.Errorf("%s ended %v after the revoke, want within 1s", k.what, took)
					}
				})
			}
			wg.Wait()
		})
	}
}

// httpGet GETs url and returns the body of a 200 answer.
func httpGet(url string) (string, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", &httpError{resp.Status, string(b)}
	}
	return string(b), nil
}

type httpError struct{ status, body string }

func (e *httpError) Error() string { return e.status + ": " + e.body }
