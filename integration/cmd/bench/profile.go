package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/clustral/clustral/integration/harness"
)

// profileDir, if set (-profile-dir), is where benchGet saves Go profiles
// of the agent and the `clustral up` daemon taken over profileSeconds of
// GETs through the mesh after its timed loop (so the loop's numbers are
// not the profiler's), one file per process and kind in
// profileKinds: <process>.cpu.pprof, <process>.allocs.pprof (allocations
// in that window), <process>.trace.pprof (an execution trace, for
// counting goroutine wake-ups; it slows the process, so take it apart
// from the CPU profile). The two processes then serve /debug/pprof/ on a
// loopback port (their hidden --pprof-listen flag). Read them with go
// tool pprof and go tool trace.
var (
	profileDir     string
	profileSeconds = 10
	profileKinds   = "cpu,allocs"
)

// pprofArgs returns the arguments that make a clustral process serve its
// profiles when profiling is on, and the address they are served on.
func pprofArgs() (args []string, addr string, err error) {
	if profileDir == "" {
		return nil, "", nil
	}
	port, err := harness.FreePort()
	if err != nil {
		return nil, "", err
	}
	addr = "127.0.0.1:" + strconv.Itoa(port)
	return []string{"--pprof-listen", addr}, addr, nil
}

// startProfiles starts taking a CPU and an allocation profile of each
// process in addrs (name to pprof address) for profileSeconds. The
// returned wait blocks until they are saved under profileDir. Without
// profileDir it does nothing.
func startProfiles(ctx context.Context, addrs map[string]string) (wait func() error) {
	if profileDir == "" {
		return func() error { return nil }
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for name, addr := range addrs {
		for _, kind := range strings.Split(profileKinds, ",") {
			wg.Go(func() {
				if err := saveProfile(ctx, addr, kind, name); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
	}
	progress("profiling %d processes for %ds into %s", len(addrs), profileSeconds, profileDir)
	return func() error {
		wg.Wait()
		return errors.Join(errs...)
	}
}

// saveProfile saves the profile kind, "cpu", "allocs" or "trace", of the
// process serving pprof on addr as profileDir/<name>.<kind>.pprof.
func saveProfile(ctx context.Context, addr, kind, name string) error {
	path := filepath.Join(profileDir, name+"."+kind+".pprof")
	endpoint := kind
	switch kind {
	case "cpu":
		endpoint = "profile"
	case "allocs", "trace":
	default:
		return fmt.Errorf("-profile-kinds: unknown kind %q (cpu, allocs, trace)", kind)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(profileSeconds)*time.Second+30*time.Second)
	defer cancel()
	url := fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", addr, endpoint, profileSeconds)
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s profile of %s: %w", kind, name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s profile of %s from %s: %s", kind, name, url, resp.Status)
	}
	if err := os.MkdirAll(profileDir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.ReadFrom(resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("%s profile of %s: %w", kind, name, err)
	}
	return f.Close()
}
