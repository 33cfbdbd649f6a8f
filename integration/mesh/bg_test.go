package mesh

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustral/clustral/integration/harness"
)

// bgKubectl is a kubectl running in the background, e.g. a watch, logs -f
// or port-forward, whose output is read while it runs. It is killed by
// t.Cleanup.
type bgKubectl struct {
	t    *testing.T
	args []string
	cmd  *exec.Cmd

	mu     sync.Mutex
	stdout bytes.Buffer
	stderr bytes.Buffer
	notify chan struct{} // one pending wakeup after output changes

	done    chan struct{} // closed when kubectl has exited
	waitErr error         // set before done is closed
}

// notifyWriter appends to one of the buffers of k.
type notifyWriter struct {
	k   *bgKubectl
	buf *bytes.Buffer
}

func (w notifyWriter) Write(p []byte) (int, error) {
	w.k.mu.Lock()
	w.buf.Write(p)
	w.k.mu.Unlock()
	select {
	case w.k.notify <- struct{}{}:
	default:
	}
	return len(p), nil
}

// startKubectl starts `kubectl --context clustral-kind args...` as u with
// extraEnv added and stdin (nil: none).
func (u *user) startKubectl(t *testing.T, extraEnv []string, stdin io.Reader, args ...string) *bgKubectl {
	t.Helper()
	path, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	full := append([]string{"--kubeconfig=" + u.Kubeconfig, "--context=clustral-kind"}, args...)
	k := &bgKubectl{t: t, args: full, notify: make(chan struct{}, 1), done: make(chan struct{})}
	k.cmd = exec.Command(path, full...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KUBECONFIG=") {
			k.cmd.Env = append(k.cmd.Env, kv)
		}
	}
	k.cmd.Env = append(k.cmd.Env, extraEnv...)
	k.cmd.Stdin = stdin
	k.cmd.Stdout = notifyWriter{k, &k.stdout}
	k.cmd.Stderr = notifyWriter{k, &k.stderr}
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := k.cmd.Start(); err != nil {
		t.Fatalf("start kubectl %v: %v", args, err)
	}
	go func() {
		k.waitErr = k.cmd.Wait()
		close(k.done)
	}()
	t.Cleanup(k.stop)
	return k
}

// stop kills kubectl's process group and waits for it.
func (k *bgKubectl) stop() {
	syscall.Kill(-k.cmd.Process.Pid, syscall.SIGKILL)
	<-k.done
}

// output returns what kubectl printed so far.
func (k *bgKubectl) output() (stdout, stderr string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.stdout.String(), k.stderr.String()
}

func (k *bgKubectl) String() string {
	o, e := k.output()
	return fmt.Sprintf("kubectl %s\nstdout: %s\nstderr: %s", strings.Join(k.args, " "), o, e)
}

// waitStdout waits until kubectl's standard output satisfies ok, and
// fails the test if kubectl exits first or timeout passes.
func (k *bgKubectl) waitStdout(timeout time.Duration, what string, ok func(stdout string) bool) string {
	k.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		o, _ := k.output()
		if ok(o) {
			return o
		}
		select {
		case <-k.notify:
		case <-k.done:
			if o, _ := k.output(); ok(o) {
				return o
			}
			k.t.Fatalf("kubectl exited (%v) before %s\n%s", k.waitErr, what, k)
		case <-deadline.C:
			k.t.Fatalf("no %s after %v\n%s", what, timeout, k)
		}
	}
}

// waitContains waits until kubectl's standard output contains s.
func (k *bgKubectl) waitContains(timeout time.Duration, s string) string {
	k.t.Helper()
	return k.waitStdout(timeout, fmt.Sprintf("%q in the output", s), func(o string) bool { return strings.Contains(o, s) })
}

// waitExit waits for kubectl to exit and returns its error, or fails the
// test after timeout.
func (k *bgKubectl) waitExit(timeout time.Duration) error {
	k.t.Helper()
	select {
	case <-k.done:
		return k.waitErr
	case <-time.After(timeout):
		k.t.Fatalf("kubectl still running after %v\n%s", timeout, k)
		return nil
	}
}

// eventually retries f for up to timeout, for state other components pick
// up asynchronously, and fails the test with f's last error.
func eventually(t *testing.T, timeout time.Duration, f func(ctx context.Context) error) {
	t.Helper()
	if err := harness.Eventually(context.Background(), timeout, f); err != nil {
		t.Fatal(err)
	}
}

// createConfigMap creates a configmap as the apiserver's admin.
func createConfigMap(t *testing.T, namespace, name string) {
	t.Helper()
	_, err := env.APIServer.Client().CoreV1().ConfigMaps(namespace).Create(context.Background(),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// newNamespace creates a namespace for one test and deletes it afterwards.
func newNamespace(t *testing.T) string {
	t.Helper()
	c := env.APIServer.Client()
	ns, err := c.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "mesh-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}
