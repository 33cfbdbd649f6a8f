package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stopGrace is how long a component gets to exit after SIGTERM before its
// process group is killed.
const stopGrace = 5 * time.Second

// tailLines is how many log lines are shown when a component fails.
const tailLines = 60

// Process is a program started by the harness, e.g. a component or a
// clustral binary under test. Its stdout and stderr go to a log file. It
// runs in its own process group and dies with the thread that started it
// (Pdeathsig), so a crashed test binary leaves nothing behind. Methods
// are safe for concurrent use.
type Process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	log     *os.File

	done    chan struct{} // closed when the process has been reaped
	waitErr error         // set before done is closed

	stopOnce sync.Once
}

// StartProcess starts bin with args, logging its output to logPath
// (appended to, so a restarted program keeps one log). env is the
// complete environment; nil means none. The caller must call Stop, e.g.
// from t.Cleanup.
func StartProcess(name, bin string, args, env []string, logPath string) (*Process, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: open log: %w", name, err)
	}
	fmt.Fprintf(f, "=== %s %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(append([]string{bin}, args...), " "))
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	if env == nil {
		cmd.Env = []string{}
	}
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{name: name, cmd: cmd, logPath: logPath, log: f, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id, which is also its process group id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// LogPath returns the file receiving the process's output.
func (p *Process) LogPath() string { return p.logPath }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done returns a channel closed when the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// Stop sends SIGTERM to the process group, waits up to five seconds, then
// kills the group, and waits for the process. It is idempotent.
func (p *Process) Stop() {
	p.stopOnce.Do(func() {
		pgid := p.cmd.Process.Pid
		if !p.Exited() {
			syscall.Kill(-pgid, syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(stopGrace):
			}
		}
		// Kill whatever is left of the group, leader or not.
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
		p.log.Close()
	})
}

// component is a process the harness started for a component (etcd, the
// controller manager), giving the type that embeds it Pid and Close.
type component struct{ proc *Process }

// Pid returns the component's process id.
func (c *component) Pid() int { return c.proc.Pid() }

// Close stops the component (SIGTERM, then SIGKILL of its process group).
func (c *component) Close() error {
	c.proc.Stop()
	return nil
}

// StopAtEnd stops p when t ends and logs the last lines of its log if t
// failed.
func (p *Process) StopAtEnd(t testing.TB, lines int) {
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("%s log:\n%s", p.name, p.Tail(lines))
		}
	})
}

// Kill kills the process group at once, without a grace period, and
// waits for the process: a crash, for tests of recovery.
func (p *Process) Kill() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.Stop()
}

// Tail returns the last n lines of the log.
func (p *Process) Tail(n int) string {
	return tailFile(p.logPath, n)
}

// Wait polls check every 50ms until it succeeds, the process exits, or
// ctx is done. The error carries the log tail.
func (p *Process) Wait(ctx context.Context, check func(context.Context) error) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		last := check(cctx)
		ccancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			if b, _ := os.ReadFile(p.logPath); bytes.Contains(b, []byte("address already in use")) {
				return p.failure(errAddrInUse)
			}
			return p.failure(fmt.Errorf("exited before ready (last check: %v)", last))
		case <-ctx.Done():
			return p.failure(fmt.Errorf("not ready: %v (last check: %v)", ctx.Err(), last))
		case <-tick.C:
		}
	}
}

// WaitHTTP waits until a GET of url (plain HTTP, or HTTPS verified against
// the system roots) answers 200.
func (p *Process) WaitHTTP(ctx context.Context, url string) error {
	return p.WaitHTTPClient(ctx, &http.Client{Timeout: 2 * time.Second}, url)
}

// WaitHTTPClient is WaitHTTP with the given client, e.g. one trusting a
// test CA.
func (p *Process) WaitHTTPClient(ctx context.Context, c *http.Client, url string) error {
	return p.Wait(ctx, answersOK(c, url, nil))
}

// waitReady is Wait bounded by timeout. A process that does not get
// ready is stopped.
func (p *Process) waitReady(ctx context.Context, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := p.Wait(ctx, check); err != nil {
		p.Stop()
		return err
	}
	return nil
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", path, err)
	}
	return LastLines(string(b), n)
}

// failure wraps err with the process state and its log tail.
func (p *Process) failure(err error) error {
	state := "running"
	if p.Exited() {
		state = fmt.Sprintf("exited: %v", p.waitErr)
	}
	return fmt.Errorf("%s (%s; log %s): %w\n--- last %d lines of %s log ---\n%s\n---",
		p.name, state, p.logPath, err, tailLines, p.name, p.Tail(tailLines))
}

// errAddrInUse is returned by waitReady when the component died because
// one of its ports was taken between choosing and binding it.
var errAddrInUse = errors.New("address already in use")

// FreePorts returns n distinct free TCP ports on 127.0.0.1. The ports are
// released before returning, so another process may take one before it is
// bound; the harness restarts its components on new ports when that
// happens.
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// FreePort returns one free TCP port on 127.0.0.1 (see FreePorts).
func FreePort() (int, error) {
	ps, err := FreePorts(1)
	if err != nil {
		return 0, err
	}
	return ps[0], nil
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// answersOK is a readiness check (see Process.Wait): a GET of url with
// the headers hdr on c answers 200.
func answersOK(c *http.Client, url string, hdr http.Header) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := getOK(ctx, c, url, hdr)
		return err
	}
}

// getOK performs a GET and returns nil on a 200 response.
func getOK(ctx context.Context, c *http.Client, url string, hdr http.Header) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(b))
	}
	return b, nil
}

// componentDir finds the binary of the component name and makes its
// directory, name below dir. It returns both.
func componentDir(name, dir string) (bin, sub string, err error) {
	if bin, err = Binary(name); err != nil {
		return "", "", err
	}
	sub = filepath.Join(dir, name)
	if err := os.MkdirAll(sub, 0o755); err != nil {
		return "", "", fmt.Errorf("start %s: %w", name, err)
	}
	return bin, sub, nil
}

// tlsComponentDir is componentDir for a component that serves TLS: it
// also makes the component's own CA, named caName.
func tlsComponentDir(name, dir, caName string) (bin, sub string, ca *CA, err error) {
	if bin, sub, err = componentDir(name, dir); err != nil {
		return "", "", nil, err
	}
	if ca, err = NewCA(caName); err != nil {
		return "", "", nil, fmt.Errorf("start %s: %w", name, err)
	}
	return bin, sub, ca, nil
}

// onFreePorts calls start with n free ports (see FreePorts), and again
// with new ones, three tries in all, while it fails with errAddrInUse.
func onFreePorts(n int, start func(ports []int) error) error {
	var err error
	for range 3 {
		ports, perr := FreePorts(n)
		if perr != nil {
			return perr
		}
		if err = start(ports); !errors.Is(err, errAddrInUse) {
			return err
		}
	}
	return err
}

// environWithout returns os.Environ() without variables having one of the
// given prefixes.
// EnvironWithout returns the environment without the variables whose
// KEY=value starts with one of prefixes.
func EnvironWithout(prefixes ...string) []string {
	var env []string
outer:
	for _, kv := range os.Environ() {
		for _, p := range prefixes {
			if strings.HasPrefix(kv, p) {
				continue outer
			}
		}
		env = append(env, kv)
	}
	return env
}

// ProcessGroupAlive reports whether any process of the group pgid exists.
// Every component runs in its own group, whose id is its pid.
func ProcessGroupAlive(pgid int) bool { return !processGone(pgid) }

// processGone reports whether no process of the group pgid exists.
func processGone(pgid int) bool {
	err := syscall.Kill(-pgid, 0)
	return errors.Is(err, syscall.ESRCH)
}
