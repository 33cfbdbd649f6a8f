package harness

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// KillGroupWith makes cmd, once started, the leader of its own process
// group, killed whole when cmd's context ends and when the test binary
// dies (Pdeathsig). cmd must come from exec.CommandContext.
func KillGroupWith(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
}

// RunInNetns runs the test binary's test named test (the outer test's
// own name: the inner one sees env and does the work) inside network
// namespace ns with env added to the environment, killed when ctx ends.
// It fails t unless the inner test passes, naming where as the place
// the inner test ran, and returns the inner test's output.
func RunInNetns(ctx context.Context, t *testing.T, ns, where, test string, env ...string) []byte {
	t.Helper()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, os.Args[0], "-test.run", "^"+test+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	KillGroupWith(cmd)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("inside the %s: %v\n%s", where, err, out)
	}
	if !strings.Contains(string(out), "--- PASS: "+test) {
		t.Fatalf("the inner test did not pass:\n%s", out)
	}
	return out
}
