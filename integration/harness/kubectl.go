package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Kubectl runs the kubectl found in $PATH. The zero value uses the
// environment's kubeconfig resolution minus $KUBECONFIG, which is always
// dropped so a developer's cluster is never touched.
type Kubectl struct {
	// Kubeconfig is passed as --kubeconfig when set.
	Kubeconfig string
	// Context is passed as --context when set.
	Context string
	// Env is appended to the environment (KEY=value).
	Env []string
	// Stdin feeds kubectl's standard input; nil means empty.
	Stdin io.Reader
	// Timeout bounds each Run; zero means one minute.
	Timeout time.Duration
}

// KubectlResult is the outcome of one kubectl run.
type KubectlResult struct {
	Stdout   string
	Stderr   string
	ExitCode int // -1 if kubectl did not exit normally
}

// KubectlError is returned by Run when kubectl exits non-zero or times
// out. The result is also returned by Run. Helm.Run returns it too, with
// Program "helm".
type KubectlError struct {
	Program  string // "kubectl" when empty
	Args     []string
	Result   KubectlResult
	TimedOut bool
	Err      error
}

func (e *KubectlError) Error() string {
	what := fmt.Sprintf("exit code %d", e.Result.ExitCode)
	if e.TimedOut {
		what = "timed out"
	}
	prog := e.Program
	if prog == "" {
		prog = "kubectl"
	}
	return fmt.Sprintf("%s %s: %s: %v\nstderr: %s", prog, strings.Join(e.Args, " "), what, e.Err, strings.TrimSpace(e.Result.Stderr))
}

func (e *KubectlError) Unwrap() error { return e.Err }

// Run runs kubectl with args and captures its output. The error is a
// *KubectlError if kubectl ran but failed. kubectl runs in its own process
// group, killed on timeout or when ctx is done.
func (k Kubectl) Run(ctx context.Context, args ...string) (KubectlResult, error) {
	path, err := exec.LookPath("kubectl")
	if err != nil {
		return KubectlResult{ExitCode: -1}, fmt.Errorf("kubectl: %w", err)
	}
	env := append(EnvironWithout("KUBECONFIG="), k.Env...)
	return runClient(ctx, "kubectl", path, k.commandLine(args), env, k.Stdin, k.Timeout)
}

// runClient runs the client program at path with args and the complete
// environment env, captures its output and returns a *KubectlError naming
// program if it fails. It runs in its own process group, which is killed
// when it exits (so nothing it started lives on), on timeout (zero means
// one minute) or when ctx is done.
func runClient(ctx context.Context, program, path string, args, env []string, stdin io.Reader, timeout time.Duration) (KubectlResult, error) {
	if timeout == 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = env
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	KillGroupWith(cmd)
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	res := KubectlResult{Stdout: stdout.String(), Stderr: stderr.String(), ExitCode: -1}
	if cmd.ProcessState != nil {
		res.ExitCode = cmd.ProcessState.ExitCode()
	}
	if err != nil {
		return res, &KubectlError{Program: program, Args: args, Result: res, TimedOut: errors.Is(ctx.Err(), context.DeadlineExceeded), Err: err}
	}
	return res, nil
}

// commandLine returns kubectl's arguments: k's flags, then args.
func (k Kubectl) commandLine(args []string) []string {
	return kubeArgs(k.Kubeconfig, "--context", k.Context, args)
}

// kubeArgs returns a Kubernetes client's arguments: --kubeconfig and the
// client's context flag, each if set, then args.
func kubeArgs(kubeconfig, contextFlag, kubeContext string, args []string) []string {
	var full []string
	if kubeconfig != "" {
		full = append(full, "--kubeconfig="+kubeconfig)
	}
	if kubeContext != "" {
		full = append(full, contextFlag+"="+kubeContext)
	}
	return append(full, args...)
}
