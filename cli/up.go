package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustral/clustral/cli/device"
	"github.com/clustral/clustral/cli/kubeconfig"
	"github.com/clustral/clustral/node/mesh"
)

// upLogFile is the background `clustral up`'s log, in the profile
// directory.
const upLogFile = "up.log"

// upReadyEnv names, in the background process's environment, the file
// descriptor of the pipe on which it tells the `clustral up` that started
// it that it is connected: one byte, then it closes the pipe.
const upReadyEnv = "CLUSTRAL_UP_READY_FD"

func newUpCmd(g *globals) *cobra.Command {
	var (
		foreground bool
		socksPort  int
		kubeconfig string
		listenPort int
		timeout    time.Duration
		tunMode    bool
		meshDNS    bool
		dnsMethod  string
		pprofAddr  string
	)
	c := &cobra.Command{
		Use:   "up",
		Short: "Join the mesh and point kubectl at every cluster you may reach",
		Long: `Join the mesh: register this device's WireGuard key (generated here, kept
0600), bring up the tunnel and a SOCKS5 proxy on 127.0.0.1 that only you
can use, and write one kubeconfig context per reachable cluster
(clustral-<cluster>). Existing kubeconfig content is preserved. The
contexts carry the proxy's password, so a kubeconfig that others could read
is made mode 0600, and clustral up says so.

clustral up returns once connected and leaves a background process;
--foreground keeps it attached (containers, debugging). clustral down
stops it and removes its contexts.

With --tun, every program reaches the mesh, and resolves its names:
clustral serves DNS for <cluster>.clustral.internal on this device's
overlay address and points the system's resolver at it for the mesh
domain only (systemd-resolved), or as the first nameserver in
/etc/resolv.conf where systemd-resolved does not manage DNS. clustral down
undoes it, also after a crash; --dns=false leaves the system's DNS
alone.`,
		Example: `  clustral up
  kubectl --context clustral-prod get pods
  clustral up --foreground --kubeconfig ./kubeconfig
  sudo clustral up --tun && curl --cacert ca.pem https://prod.clustral.internal/version`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			dir, err := g.dir()
			if err != nil {
				return err
			}
			if st, alive := device.ReadState(dir); alive {
				fmt.Fprintf(g.stdout, "Already up (pid %d, %d contexts). Run clustral down first to restart it.\n", st.PID, len(st.Contexts))
				return nil
			}
			// Only the session: the background process makes the
			// coordinator's client, and the CA pool that goes with it
			// (with a CA file, the system roots too: about 9 ms) would
			// be loaded twice.
			if _, err := loadSession(dir); err != nil {
				return err
			}
			method, err := device.ParseDNSMethod(dnsMethod)
			if err != nil {
				return withHint(exitUsage, err, "clustral up --tun --dns-method auto")
			}
			if c.Flags().Changed("dns-method") && !tunMode {
				return withHint(exitUsage, errors.New("--dns-method needs --tun: without it, mesh names resolve in the SOCKS5 proxy only"), "clustral up --tun --dns-method "+dnsMethod)
			}
			if !meshDNS {
				method = device.DNSOff
			}
			if pprofAddr != "" {
				if err := checkPprofAddr(pprofAddr); err != nil {
					return err
				}
			}
			o := upOptions{socksPort, kubeconfig, listenPort, tunMode, method, pprofAddr}
			if foreground {
				return runUp(c.Context(), g, dir, o)
			}
			return startUpBackground(c.Context(), g, dir, timeout, o)
		},
	}
	c.Flags().BoolVar(&foreground, "foreground", false, "stay attached instead of leaving a background process")
	c.Flags().IntVar(&socksPort, "socks-port", 0, "port of the local SOCKS5 proxy (default: a free port)")
	c.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file to write contexts to (default: KUBECONFIG or ~/.kube/config)")
	c.Flags().IntVar(&listenPort, "wg-port", 0, "WireGuard UDP port (default: a free port)")
	c.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "how long to wait for the tunnel to come up")
	c.Flags().BoolVar(&tunMode, "tun", false, "use a TUN device ("+mesh.TUNName+") and route the overlay ranges, so any program reaches overlay addresses; the mesh may only answer connections this machine opens (Linux, root)")
	c.Flags().BoolVar(&meshDNS, "dns", true, "with --tun, serve DNS for the mesh domain and point the system's resolver at it; false leaves the system's DNS alone")
	addPprofFlag(c.Flags(), &pprofAddr)
	c.Flags().StringVar(&dnsMethod, "dns-method", string(device.DNSAuto), "with --tun, how the system's resolver learns of the mesh DNS: auto, resolved (systemd-resolved split DNS), resolv.conf (first nameserver in /etc/resolv.conf, not split)")
	return c
}

type upOptions struct {
	socksPort  int
	kubeconfig string
	wgPort     int
	tun        bool
	dns        device.DNSMethod
	pprof      string // --pprof-listen
}

// startUpBackground starts `clustral up --foreground` as a detached
// process and waits until it reports connected.
func startUpBackground(ctx context.Context, g *globals, dir string, timeout time.Duration, o upOptions) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"up", "--foreground"}
	if g.profile != "" {
		args = append(args, "--profile", g.profile)
	}
	if g.debug {
		args = append(args, "--debug")
	}
	args = append(args, "--socks-port", strconv.Itoa(o.socksPort), "--wg-port", strconv.Itoa(o.wgPort))
	if o.tun {
		args = append(args, "--tun")
		if o.dns == device.DNSOff {
			args = append(args, "--dns=false")
		} else {
			args = append(args, "--dns-method", string(o.dns))
		}
	}
	if o.pprof != "" {
		args = append(args, "--"+pprofFlag, o.pprof)
	}
	if o.kubeconfig != "" {
		kc, err := filepath.Abs(o.kubeconfig)
		if err != nil {
			return err
		}
		args = append(args, "--kubeconfig", kc)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(dir, upLogFile), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	// The background process says on this pipe when it is connected,
	// so up returns the moment kubectl can be used.
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start background process: %w", err)
	}
	defer readyR.Close()
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.ExtraFiles = []*os.File{readyW} // descriptor 3
	cmd.Env = append(os.Environ(), "CLUSTRAL_UP_BACKGROUND=1", upReadyEnv+"=3")
	err = cmd.Start()
	readyW.Close()
	if err != nil {
		return fmt.Errorf("start background process: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ready := make(chan struct{})
	go func() {
		// One byte when connected; EOF if it exits first, which
		// exited reports.
		if n, _ := readyR.Read(make([]byte, 1)); n == 1 {
			close(ready)
		}
	}()

	sp := g.spinner("Bringing the tunnel up")
	defer sp.stop()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case err := <-exited:
			sp.stop()
			log, _ := os.ReadFile(filepath.Join(dir, upLogFile))
			return backgroundError(err, log, filepath.Join(dir, upLogFile))
		case <-deadline.C:
			cmd.Process.Signal(syscall.SIGTERM)
			return withHint(exitUnreach, fmt.Errorf("the tunnel did not come up within %s", timeout), "see "+filepath.Join(dir, upLogFile)+", or run: clustral doctor")
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
			return ctx.Err()
		case <-ready:
			st, alive := device.ReadState(dir)
			if !alive || st.PID != cmd.Process.Pid || st.Status != "connected" {
				cmd.Process.Signal(syscall.SIGTERM)
				return fmt.Errorf("clustral up said it is connected, but %s does not say so; see %s", filepath.Join(dir, device.StateFile), filepath.Join(dir, upLogFile))
			}
			sp.stop()
			cmd.Process.Release()
			printUp(g.stdout, st)
			return nil
		}
	}
}

// backgroundError is the error of a background process that exited
// before it was connected (its Wait error, and log, its log file's
// content): the error and hint it printed last, and its exit code, so
// clustral up fails as `clustral up --foreground` would have. Without an
// error line (a crash), it is the log's last line, and the hint names
// the log file.
func backgroundError(exited error, log []byte, logFile string) error {
	code := exitError
	var ee *exec.ExitError
	if errors.As(exited, &ee) && ee.ExitCode() > 0 {
		code = ee.ExitCode()
	}
	var msg, hint string
	for _, l := range splitLines(string(log)) {
		if m, ok := strings.CutPrefix(l, "error: "); ok {
			msg, hint = m, ""
		} else if h, ok := strings.CutPrefix(l, "hint: "); ok && msg != "" {
			hint = h
		}
	}
	if hint == "" {
		hint = "see " + logFile
	}
	if msg == "" {
		lines := slices.DeleteFunc(splitLines(string(log)), func(l string) bool { return strings.TrimSpace(l) == "" })
		last := "no output"
		if len(lines) > 0 {
			last = lines[len(lines)-1]
		}
		return withHint(code, fmt.Errorf("clustral up's background process exited (%v): %s", exited, last), hint)
	}
	return withHint(code, errors.New(msg), hint)
}

func printUp(w io.Writer, st *device.State) {
	fmt.Fprintf(w, "Connected as %s (%s).\n", st.User, joinNonEmpty(st.Addresses))
	if len(st.Contexts) == 0 {
		fmt.Fprintln(w, "You may reach no cluster yet. Ask an administrator for a role, then run clustral up again.")
		return
	}
	if st.DNS != nil {
		fmt.Fprintf(w, "Mesh DNS: %s.\n", st.DNS.Describe())
	}
	if st.KubeconfigWas != "" {
		fmt.Fprintf(w, "kubeconfig %s was mode %s; it is now 0600 because it holds the tunnel's proxy credential.\n", st.Kubeconfig, st.KubeconfigWas)
	}
	fmt.Fprintf(w, "kubeconfig %s has %d context(s):\n", st.Kubeconfig, len(st.Contexts))
	for _, c := range st.Contexts {
		fmt.Fprintf(w, "  kubectl --context %s get pods\n", c)
	}
}

func joinNonEmpty(s []string) string {
	out := ""
	for _, v := range s {
		if v == "" {
			continue
		}
		if out != "" {
			out += ", "
		}
		out += v
	}
	return out
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// upProcs is GOMAXPROCS in the `clustral up` daemon unless its
// environment sets GOMAXPROCS. The daemon relays one device's traffic
// through SOCKS5, a netstack and wireguard-go, whose goroutines hand each
// packet on to the next (about 17 wake-ups per small GET): with one P
// they do so on one thread instead of waking another, which in the GET
// bench cut up_cpu_us_per_get by a quarter at the same latency and
// kubectl exec throughput. One core of WireGuard is more than a device's
// link to a cluster carries.
const upProcs = 1

// limitProcs sets GOMAXPROCS to upProcs unless getenv("GOMAXPROCS")
// chooses, and returns what it is now.
func limitProcs(getenv func(string) string) int {
	if getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(upProcs)
	}
	return runtime.GOMAXPROCS(0)
}

// runUp is the foreground body of `clustral up`: the device runtime with
// the stored session, until ctx is done.
func runUp(ctx context.Context, g *globals, dir string, o upOptions) error {
	limitProcs(os.Getenv)
	log := slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if g.debug {
		log = g.logger()
	}
	sess, api, err := g.session()
	if err != nil {
		return err
	}
	ready, err := readySignal()
	if err != nil {
		return err
	}
	if err := servePprof(ctx, o.pprof, log); err != nil {
		return err
	}
	// Joining allocates wireguard-go's packet buffers, about 32 MiB
	// (128 of 64 KiB for each receive routine and for the TUN reader),
	// within milliseconds. With the collector on, that growth from a
	// 3 MiB heap sets off four cycles in a row (4, 9, 19, 36 MB goals),
	// each slowing every goroutine that allocates while it marks, just as
	// the relay's first connection and the first map are waited for: on
	// a busy 2-core machine, about 13 ms of the 15 from joined to the
	// relay. Hold the collector until connected.
	releaseGC := holdGC(startupGCHold)
	defer releaseGC()
	connected := func() {
		if ready != nil {
			ready()
		}
		releaseGC()
	}
	err = device.Run(ctx, device.Config{
		Dir:         dir,
		Coordinator: api,
		User:        sess.Session.User.Login,
		RelayClient: relayClient(api.HTTPClient()),
		SOCKSPort:   o.socksPort,
		WGPort:      o.wgPort,
		TUN:         o.tun,
		DNS:         o.dns,
		Kubeconfig:  o.kubeconfig,
		Logger:      log,
		Connected:   connected,
	})
	return cliErr(err)
}

// startupGCHold bounds how long holdGC keeps the collector off while the
// device comes up, and startupHeapLimit the heap meanwhile.
const (
	startupGCHold    = 10 * time.Second
	startupHeapLimit = 256 << 20
)

// holdGC turns the garbage collector off, with a memory limit of at most
// startupHeapLimit as the backstop, until the returned func is called or
// hold has passed. The func restores both settings; it may be called
// more than once, from any goroutine.
func holdGC(hold time.Duration) (release func()) {
	percent := debug.SetGCPercent(-1)
	limit := debug.SetMemoryLimit(-1) // reads it
	debug.SetMemoryLimit(min(limit, startupHeapLimit))
	var once sync.Once
	restore := func() {
		once.Do(func() {
			debug.SetMemoryLimit(limit)
			debug.SetGCPercent(percent)
		})
	}
	t := time.AfterFunc(hold, restore)
	return func() {
		t.Stop()
		restore()
	}
}

// readySignal returns the func that tells the `clustral up` which started
// this background process that it is connected (upReadyEnv), or nil in
// the foreground.
func readySignal() (func(), error) {
	v := os.Getenv(upReadyEnv)
	if v == "" {
		return nil, nil
	}
	os.Unsetenv(upReadyEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q is not a file descriptor; it is set by clustral up for its background process, unset it", upReadyEnv, v)
	}
	syscall.CloseOnExec(fd) // not for the programs the device runs
	f := os.NewFile(uintptr(fd), "clustral-up-ready")
	return func() {
		f.Write([]byte{1})
		f.Close()
	}, nil
}

func newDownCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "down",
		Short:   "Leave the mesh and remove clustral's kubeconfig contexts",
		Example: "  clustral down",
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			dir, err := g.dir()
			if err != nil {
				return err
			}
			if err := stopUp(g, dir); err != nil {
				return err
			}
			return nil
		},
	}
}

// stopUp stops a running up and waits for it to clean up.
func stopUp(g *globals, dir string) error {
	st, alive := device.ReadState(dir)
	if !alive {
		if st != nil {
			// A crashed up: clean its contexts here.
			kubeconfig.Writer{Path: st.Kubeconfig}.Set(nil, st.Contexts)
			os.Remove(filepath.Join(dir, device.StateFile))
		}
		// And the system's resolver, if it pointed at the mesh DNS.
		done, err := device.RestoreDNS(dir)
		if err != nil {
			return fmt.Errorf("restore the system's DNS: %w", err)
		}
		if done != "" {
			fmt.Fprintf(g.stdout, "Restored the system's DNS: %s.\n", done)
		}
		fmt.Fprintln(g.stdout, "clustral is not up.")
		return nil
	}
	if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop clustral up (pid %d): %w", st.PID, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if !device.Alive(st.PID) {
			fmt.Fprintf(g.stdout, "Down. Removed %d kubeconfig context(s).\n", len(st.Contexts))
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("clustral up (pid %d) did not stop within 10s", st.PID)
}
