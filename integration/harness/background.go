package harness

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BackgroundKubectl is a kubectl running in the background, e.g. a watch,
// logs -f or port-forward, whose output is read while it runs. Its
// methods are safe for concurrent use; those that wait fail the test it
// was started for. It is killed by that test's cleanup.
type BackgroundKubectl struct {
	t    testing.TB
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
	k   *BackgroundKubectl
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

// Start starts kubectl with args in the background, in its own process
// group, for the test t, which fails if kubectl cannot be started.
// k.Timeout does not apply: the process runs until it exits, Stop is
// called or t's cleanup kills it.
func (k Kubectl) Start(t testing.TB, args ...string) *BackgroundKubectl {
	t.Helper()
	path, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	full := k.commandLine(args)
	b := &BackgroundKubectl{t: t, args: full, notify: make(chan struct{}, 1), done: make(chan struct{})}
	b.cmd = exec.Command(path, full...)
	b.cmd.Env = append(EnvironWithout("KUBECONFIG="), k.Env...)
	b.cmd.Stdin = k.Stdin
	b.cmd.Stdout = notifyWriter{b, &b.stdout}
	b.cmd.Stderr = notifyWriter{b, &b.stderr}
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("start kubectl %v: %v", args, err)
	}
	go func() {
		b.waitErr = b.cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(b.Stop)
	return b
}

// Stop kills kubectl's process group and waits for kubectl to exit. It
// may be called more than once.
func (k *BackgroundKubectl) Stop() {
	syscall.Kill(-k.cmd.Process.Pid, syscall.SIGKILL)
	<-k.done
}

// Output returns what kubectl printed so far.
func (k *BackgroundKubectl) Output() (stdout, stderr string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.stdout.String(), k.stderr.String()
}

// String returns the command line and the output so far, for failure
// messages.
func (k *BackgroundKubectl) String() string {
	o, e := k.Output()
	return fmt.Sprintf("kubectl %s\nstdout: %s\nstderr: %s", strings.Join(k.args, " "), o, e)
}

// WaitStdout waits until kubectl's standard output satisfies ok and
// returns it. It fails the test, naming what it waited for, if kubectl
// exits first or timeout passes.
func (k *BackgroundKubectl) WaitStdout(timeout time.Duration, what string, ok func(stdout string) bool) string {
	k.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		o, _ := k.Output()
		if ok(o) {
			return o
		}
		select {
		case <-k.notify:
		case <-k.done:
			if o, _ := k.Output(); ok(o) {
				return o
			}
			k.t.Fatalf("kubectl exited (%v) before %s\n%s", k.waitErr, what, k)
		case <-deadline.C:
			k.t.Fatalf("no %s after %v\n%s", what, timeout, k)
		}
	}
}

// WaitContains waits until kubectl's standard output contains s.
func (k *BackgroundKubectl) WaitContains(timeout time.Duration, s string) string {
	k.t.Helper()
	return k.WaitStdout(timeout, fmt.Sprintf("%q in the output", s), func(o string) bool { return strings.Contains(o, s) })
}

// WaitExit waits for kubectl to exit and returns its error, or fails the
// test after timeout.
func (k *BackgroundKubectl) WaitExit(timeout time.Duration) error {
	k.t.Helper()
	select {
	case <-k.done:
		return k.waitErr
	case <-time.After(timeout):
		k.t.Fatalf("kubectl still running after %v\n%s", timeout, k)
		return nil
	}
}
