package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// benchUpLoad measures the `clustral up` daemon's memory under the load
// of a small team's tooling: f.upLoadClients kubectl clients run
// `kubectl get --raw /version` through the mesh, each process a new
// connection as a kubectl invocation is, at f.upLoadRate requests a
// second between them, for f.upLoadTime. The daemon's resident set is
// sampled throughout; up_rss_mib_under_load is the largest sample,
// up_rss_mib_idle the one before the load.
func benchUpLoad(ctx context.Context, m *mesh, f flags) error {
	if f.upLoadTime <= 0 || f.upLoadClients <= 0 || f.upLoadRate <= 0 {
		return nil
	}
	pid, err := upPID(m.user.Dir)
	if err != nil {
		return err
	}
	idle, err := rssKiB(pid)
	if err != nil {
		return err
	}
	progress("%d kubectl clients at %.0f requests/s for %v through clustral up (pid %d, %d KiB)", f.upLoadClients, f.upLoadRate, f.upLoadTime, pid, idle)
	var peak atomic.Int64
	peak.Store(idle)
	lctx, cancel := context.WithTimeout(ctx, f.upLoadTime)
	defer cancel()
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for lctx.Err() == nil {
			if kib, err := rssKiB(pid); err == nil && kib > peak.Load() {
				peak.Store(kib)
			}
			select {
			case <-lctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
		}
	})
	k := m.user.Kubectl()
	k.Timeout = 20 * time.Second
	every := time.Duration(float64(f.upLoadClients) / f.upLoadRate * float64(time.Second))
	var done, failed atomic.Int64
	g := new(errgroup.Group)
	for i := range f.upLoadClients {
		g.Go(func() error {
			// Spread the clients over the period.
			select {
			case <-lctx.Done():
				return nil
			case <-time.After(every * time.Duration(i) / time.Duration(f.upLoadClients)):
			}
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				if _, err := k.Run(lctx, "--context", kubeContext, "get", "--raw", "/version"); err != nil {
					if lctx.Err() != nil {
						return nil
					}
					failed.Add(1)
				} else {
					done.Add(1)
				}
				select {
				case <-lctx.Done():
					return nil
				case <-t.C:
				}
			}
		})
	}
	g.Wait()
	cancel()
	sampler.Wait()
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d of %d kubectl requests under load failed", n, n+done.Load())
	}
	rate := float64(done.Load()) / f.upLoadTime.Seconds()
	progress("%d kubectl requests (%.1f/s); clustral up RSS %d KiB idle, %d KiB at most", done.Load(), rate, idle, peak.Load())
	report("up_rss_mib_idle", float64(idle)/1024, "MiB")
	report("up_rss_mib_under_load", float64(peak.Load())/1024, "MiB")
	report("up_load_requests_per_s", rate, "req/s")
	return nil
}

// upPID reads the process id of the user's `clustral up` from its state
// file in the default profile under dir.
func upPID(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "config", "profiles", "default", "up.json"))
	if err != nil {
		return 0, fmt.Errorf("clustral up state: %w", err)
	}
	var st struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(b, &st); err != nil || st.PID == 0 {
		return 0, fmt.Errorf("clustral up state: no pid (%v)", err)
	}
	return st.PID, nil
}
