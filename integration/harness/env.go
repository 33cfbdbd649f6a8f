package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Options select the components of an Env. The zero value starts etcd,
// kube-apiserver and kube-controller-manager.
type Options struct {
	// APIServer configures kube-apiserver, e.g. extra token identities.
	APIServer APIServerOptions
	// SkipControllerManager leaves kube-controller-manager out. Without
	// it the built-in view/edit/admin ClusterRoles have no rules and
	// namespaces are never deleted.
	SkipControllerManager bool
	// SkipKubernetes starts no etcd, apiserver or controller manager:
	// only Dex, for a run against an existing cluster.
	SkipKubernetes bool
	// Dex, if non-nil, starts Dex with these options.
	Dex *DexOptions
	// KWOK starts KWOK and creates its fake node. It can also be started
	// later with Env.StartKWOK.
	KWOK bool
}

// Env is a set of running components sharing one temporary directory.
// Fields for components that were not started are nil. Close stops
// everything; it is safe to call more than once and from a deferred call
// after a partial start.
type Env struct {
	// Dir holds every component's files and logs.
	Dir string

	Etcd              *Etcd
	APIServer         *APIServer
	ControllerManager *ControllerManager // nil if skipped
	Dex               *Dex               // nil unless Options.Dex was set
	KWOK              *KWOK              // nil unless started

	ownDir    bool
	mu        sync.Mutex
	closed    bool
	pids      []int
	closeErrs error
}

// Start starts the components selected by opts in a new temporary
// directory. It is meant for TestMain, where one Env serves a whole
// package; the caller must call Close (see Main). On error everything
// already started is stopped and the error carries the failing
// component's log tail.
func Start(ctx context.Context, opts Options) (*Env, error) {
	dir, err := os.MkdirTemp("", "clustral-it-")
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	e, err := start(ctx, dir, opts)
	if e != nil {
		e.ownDir = true
	}
	if err != nil {
		os.RemoveAll(dir)
	}
	return e, err
}

// New starts the components selected by opts for one test, in a
// directory under t.TempDir(). Everything is stopped when the test ends;
// if it failed, the components' log tails are logged first.
func New(t testing.TB, opts Options) *Env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e, err := start(ctx, t.TempDir(), opts)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	e.LogOnFailure(t)
	return e
}

func start(ctx context.Context, dir string, opts Options) (e *Env, err error) {
	e = &Env{Dir: dir}
	defer func() {
		if err != nil {
			e.Close()
			e = nil
		}
	}()
	if opts.SkipKubernetes {
		if opts.Dex != nil {
			if e.Dex, err = StartDex(ctx, dir, *opts.Dex); err != nil {
				return nil, err
			}
			e.track(e.Dex.Pid())
		}
		return e, nil
	}
	if e.Etcd, err = StartEtcd(ctx, dir); err != nil {
		return nil, err
	}
	e.track(e.Etcd.Pid())
	if e.APIServer, err = StartAPIServer(ctx, dir, e.Etcd.URL, opts.APIServer); err != nil {
		return nil, err
	}
	e.track(e.APIServer.Pid())
	var wg sync.WaitGroup
	var cmErr, dexErr error
	if !opts.SkipControllerManager {
		wg.Go(func() { e.ControllerManager, cmErr = StartControllerManager(ctx, dir, e.APIServer) })
	}
	if opts.Dex != nil {
		wg.Go(func() { e.Dex, dexErr = StartDex(ctx, dir, *opts.Dex) })
	}
	wg.Wait()
	if e.ControllerManager != nil {
		e.track(e.ControllerManager.Pid())
	}
	if e.Dex != nil {
		e.track(e.Dex.Pid())
	}
	if err := errors.Join(cmErr, dexErr); err != nil {
		return nil, err
	}
	if opts.KWOK {
		if _, err := e.StartKWOK(ctx); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// StartKWOK starts KWOK for the Env's apiserver and creates its fake
// node. It fails if KWOK is already running.
func (e *Env) StartKWOK(ctx context.Context) (*KWOK, error) {
	e.mu.Lock()
	running := e.KWOK != nil
	e.mu.Unlock()
	if running {
		return nil, errors.New("harness: KWOK already started")
	}
	k, err := StartKWOK(ctx, e.Dir, e.APIServer)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.KWOK = k
	e.mu.Unlock()
	if err := k.CreateNode(ctx); err != nil {
		return nil, err
	}
	return k, nil
}

func (e *Env) track(pid int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.pids = append(e.pids, pid)
}

// Pids returns the process ids of every component process started so far
// (including processes replaced by restarts). Each is also the id of the
// component's process group.
func (e *Env) Pids() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	pids := append([]int(nil), e.pids...)
	if e.Dex != nil {
		pids = appendNew(pids, e.Dex.allPids()...)
	}
	if e.KWOK != nil {
		pids = appendNew(pids, e.KWOK.allPids()...)
	}
	return pids
}

func appendNew(s []int, vs ...int) []int {
	for _, v := range vs {
		found := false
		for _, x := range s {
			found = found || x == v
		}
		if !found {
			s = append(s, v)
		}
	}
	return s
}

// Logs returns the log tail of every started component, for failure
// reports.
func (e *Env) Logs() string {
	var sb strings.Builder
	add := func(name, path string) {
		fmt.Fprintf(&sb, "--- last %d lines of %s (%s) ---\n%s\n", tailLines, name, path, tailFile(path, tailLines))
	}
	if e.Etcd != nil {
		add("etcd", e.Etcd.LogPath)
	}
	if e.APIServer != nil {
		add("kube-apiserver", e.APIServer.LogPath)
	}
	if e.ControllerManager != nil {
		add("kube-controller-manager", e.ControllerManager.LogPath)
	}
	if e.Dex != nil {
		add("dex", e.Dex.LogPath)
	}
	if k := e.kwok(); k != nil {
		add("kwok", k.LogPath)
	}
	return sb.String()
}

func (e *Env) kwok() *KWOK {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.KWOK
}

// LogOnFailure registers a cleanup on t that logs the components' log
// tails if t failed. Use it in tests sharing a package-level Env.
func (e *Env) LogOnFailure(t testing.TB) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("component logs:\n%s", e.Logs())
		}
	})
}

// Close stops every component (in reverse start order) and, for an Env
// from Start, removes its directory unless CLUSTRAL_TEST_KEEP is set.
func (e *Env) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return e.closeErrs
	}
	e.closed = true
	e.mu.Unlock()
	if k := e.kwok(); k != nil {
		k.Close()
	}
	var wg sync.WaitGroup
	if e.Dex != nil {
		wg.Go(func() { e.Dex.Close() })
	}
	if e.ControllerManager != nil {
		wg.Go(func() { e.ControllerManager.Close() })
	}
	wg.Wait()
	if e.APIServer != nil {
		e.APIServer.Close()
	}
	if e.Etcd != nil {
		e.Etcd.Close()
	}
	var errs []error
	for _, pid := range e.Pids() {
		if !processGone(pid) {
			errs = append(errs, fmt.Errorf("harness: process group %d still alive after Close", pid))
		}
	}
	if e.ownDir && os.Getenv("CLUSTRAL_TEST_KEEP") == "" {
		if err := os.RemoveAll(e.Dir); err != nil {
			errs = append(errs, err)
		}
	} else if e.ownDir {
		fmt.Fprintf(os.Stderr, "harness: keeping %s\n", filepath.Clean(e.Dir))
	}
	e.closeErrs = errors.Join(errs...)
	return e.closeErrs
}

// Main starts an Env for a test package, hands it to setup, runs the
// tests and stops the Env. It returns the exit code for os.Exit:
//
//	var env *harness.Env
//
//	func TestMain(m *testing.M) {
//		os.Exit(harness.Main(m, harness.Options{}, func(e *harness.Env) { env = e }))
//	}
//
// If a test fails, the components' log tails are printed. Processes also
// die with the test binary if it crashes (they run with Pdeathsig).
func Main(m *testing.M, opts Options, setup func(*Env)) int {
	if n, err := ReapOrphans(); err != nil {
		fmt.Fprintf(os.Stderr, "harness: %v\n", err)
	} else if n > 0 {
		fmt.Fprintf(os.Stderr, "harness: stopped %d processes left by test binaries that are gone\n", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	e, err := Start(ctx, opts)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "harness: %v\n", err)
		return 1
	}
	defer e.Close()
	setup(e)
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "component logs:\n%s", e.Logs())
	}
	if err := e.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	return code
}
