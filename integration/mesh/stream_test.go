package mesh

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustral/clustral/integration/harness"
)

// At -v=4 kubectl logs which websocket subprotocol it negotiated, and
// when it gives up on websockets and falls back to SPDY.
var (
	websocketLog = regexp.MustCompile(`(?i)subprotocol is|subprotocol negotiated|negotiated protocol|negotiation complete`)
	fallbackLog  = regexp.MustCompile(`(?i)fallback|falling back`)
)

// TestStreams: exec (with and without stdin), logs -f and port-forward
// work through the mesh over websockets and over SPDY, against pods on
// KWOK's fake node; a role without pods/exec gets the apiserver's own
// harness.Refusal.
func TestStreams(t *testing.T) {
	kw := suite.KWOK(t)
	_, a, b := newAliceAndBob(t, "viewer", "editor")
	a.MustUp()
	b.MustUp()

	ctx := context.Background()
	ns, pod := suite.NewNamespace(t), "app"
	logFile := filepath.Join(t.TempDir(), "app.log")
	if err := harness.WriteCRILog(logFile, "first line", "second line"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "behind the pod: "+r.URL.Path)
	}))
	t.Cleanup(srv.Close)
	target, _ := url.Parse(srv.URL)
	tport, _ := strconv.Atoi(target.Port())
	if err := kw.SetExec(ctx, ns, pod, "", nil); err != nil {
		t.Fatal(err)
	}
	if err := kw.SetLogs(ctx, ns, pod, logFile, true); err != nil {
		t.Fatal(err)
	}
	if err := kw.SetPortForward(ctx, ns, pod, 8080, target.Hostname(), int32(tport)); err != nil {
		t.Fatal(err)
	}
	if _, err := kw.CreatePod(ctx, harness.FakePod(ns, pod, "c")); err != nil {
		t.Fatal(err)
	}
	// KWOK learns of the rules through a watch: wait until exec works.
	start := time.Now()
	harness.MustEventually(t, 20*time.Second, func(context.Context) error {
		_, err := b.RunKubectl("exec", "-n", ns, pod, "-c", "c", "--", "true")
		return err
	})
	t.Logf("KWOK's exec rule took %v", time.Since(start))

	for _, mode := range []struct {
		name string
		ws   bool
	}{{"websocket", true}, {"spdy", false}} {
		env := []string{
			"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=" + strconv.FormatBool(mode.ws),
			"KUBECTL_PORT_FORWARD_WEBSOCKETS=" + strconv.FormatBool(mode.ws),
		}
		// -v=4 shows the protocol kubectl used; the logs go to stderr.
		kargs := func(args ...string) []string {
			return append([]string{"--context", "clustral-kind", "-v=4"}, args...)
		}
		checkProtocol := func(t *testing.T, stderr string) {
			t.Helper()
			ws := websocketLog.MatchString(stderr) && !fallbackLog.MatchString(stderr)
			if ws != mode.ws {
				t.Errorf("kubectl used websockets: %v, want %v; its log:\n%s", ws, mode.ws, stderr)
			}
		}

		for _, ex := range []struct {
			name, stdin string
			command     []string // after exec [-i] -n ns pod -c c --
			want        string
		}{
			{"exec", "", []string{"echo", "hello"}, "hello\n"},
			// head, not cat: KWOK does not pass on stdin's EOF.
			{"exec stdin", "one line from stdin\nanother\n", []string{"head", "-n", "1"}, "one line from stdin\n"},
		} {
			t.Run(mode.name+"/"+ex.name, func(t *testing.T) {
				k := b.Kubectl()
				k.Env = env
				args := []string{"exec", "-n", ns, pod, "-c", "c", "--"}
				if ex.stdin != "" {
					k.Stdin = strings.NewReader(ex.stdin)
					args = append([]string{"exec", "-i"}, args[1:]...)
				}
				res, err := k.Run(ctx, kargs(append(args, ex.command...)...)...)
				if err != nil {
					t.Fatal(err)
				}
				if res.Stdout != ex.want {
					t.Errorf("%s: stdout = %q, want %q", strings.Join(ex.command, " "), res.Stdout, ex.want)
				}
				checkProtocol(t, res.Stderr)
			})
		}

		t.Run(mode.name+"/logs -f", func(t *testing.T) {
			harness.MustEventually(t, 20*time.Second, func(context.Context) error {
				_, err := b.RunKubectl("logs", "-n", ns, pod, "-c", "c")
				return err
			})
			l := b.StartKubectl(t, env, nil, "logs", "-f", "-n", ns, pod, "-c", "c")
			l.WaitContains(10*time.Second, "second line\n")
			for i := range 3 {
				line := fmt.Sprintf("appended %s %d", mode.name, i)
				start := time.Now()
				appendCRILog(t, logFile, line)
				l.WaitContains(10*time.Second, line+"\n")
				t.Logf("%q followed after %v", line, time.Since(start))
			}
		})

		t.Run(mode.name+"/port-forward", func(t *testing.T) {
			pf := b.StartKubectl(t, env, nil, "-v=4", "port-forward", "-n", ns, "pod/"+pod, ":8080")
			re := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 8080`)
			out := pf.WaitStdout(20*time.Second, "the forwarding address", re.MatchString)
			local := "http://127.0.0.1:" + re.FindStringSubmatch(out)[1]
			var wg sync.WaitGroup
			for i := range 6 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					path := fmt.Sprintf("/%s/%d", mode.name, i)
					body, err := harness.HTTPGet(local + path)
					if err != nil {
						t.Errorf("GET %s through port-forward: %v", path, err)
					} else if want := "behind the pod: " + path; body != want {
						t.Errorf("GET %s through port-forward = %q, want %q", path, body, want)
					}
				}()
				if i < 3 {
					wg.Wait() // the first few one by one, then at once
				}
			}
			wg.Wait()
			_, stderr := pf.Output()
			checkProtocol(t, stderr)
		})

		t.Run(mode.name+"/exec without pods/exec", func(t *testing.T) {
			res, err := a.RunKubectlEnv(env, "exec", "-n", ns, pod, "-c", "c", "--", "echo", "hello")
			if err == nil {
				t.Fatalf("alice (viewer) could exec: %q", res.Stdout)
			}
			want := `pods "app" is forbidden: User "alice@example.com" cannot create resource "pods/exec" in API group "" in the namespace "` + ns + `"`
			if !strings.Contains(res.Stderr, want) {
				t.Errorf("alice exec: stderr = %q, want the apiserver's %q", res.Stderr, want)
			}
		})
	}
}

// appendCRILog appends one line to a CRI-format log file.
func appendCRILog(t *testing.T, path, line string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "%s stdout F %s\n", time.Now().UTC().Format(time.RFC3339Nano), line); err != nil {
		t.Fatal(err)
	}
}
