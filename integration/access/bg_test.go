package access

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
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
