package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/clustral/clustral/integration/harness"
)

// registeredAt returns the time an agent's text log gives its
// "agent registered" line.
func registeredAt(logPath string) (time.Time, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return time.Time{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `msg="agent registered"`) {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		t, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			return time.Time{}, fmt.Errorf("agent log %s: registration time %q: %w", logPath, ts, err)
		}
		return t, nil
	}
	if err := sc.Err(); err != nil {
		return time.Time{}, err
	}
	return time.Time{}, fmt.Errorf("agent log %s: no registration line", logPath)
}

// benchAgentRestart kills the cluster's agent with SIGKILL and starts a
// new one (a new key, as a replaced pod has) f.agentRestarts times, with
// kubectl through the mesh running back to back from the kill on. It
// times from the moment the new agent logged its registration until the
// first kubectl that succeeds has its answer: what a user sees of an
// agent replaced under them. Before the first round, kubectl works
// through the agent, so the device has a session with it.
func benchAgentRestart(ctx context.Context, m *mesh, f flags) error {
	if f.agentRestarts <= 0 {
		return nil
	}
	if err := m.ensureGranted(ctx); err != nil {
		return err
	}
	k := m.user.Kubectl()
	k.Timeout = 30 * time.Second
	progress("%d agent restarts", f.agentRestarts)
	var samples []time.Duration
	for i := range f.agentRestarts {
		if _, err := firstKubectl(ctx, k, time.Now()); err != nil {
			return fmt.Errorf("round %d: before the restart: %w", i+1, err)
		}
		m.agent.Proc.Kill()
		type started struct {
			a   *harness.Agent
			err error
		}
		ch := make(chan started, 1)
		go func() {
			a, err := m.startAgent(ctx)
			ch <- started{a, err}
		}()
		_, err := firstKubectl(ctx, k, time.Now())
		answered := time.Now()
		s := <-ch
		if s.err != nil {
			return fmt.Errorf("round %d: new agent: %w", i+1, s.err)
		}
		m.agent = s.a
		if err != nil {
			return fmt.Errorf("round %d: after the restart: %w", i+1, err)
		}
		reg, err := registeredAt(s.a.Proc.LogPath())
		if err != nil {
			return fmt.Errorf("round %d: %w", i+1, err)
		}
		d := answered.Sub(reg)
		progress("round %d: kubectl answered %v after the new agent registered", i+1, d.Round(time.Millisecond))
		samples = append(samples, d)
	}
	report("agent_restart_to_first_kubectl_ms", ms(percentile(samples, 50)), "ms")
	report("agent_restart_to_first_kubectl_max_ms", ms(percentile(samples, 100)), "ms")
	report("agent_restart_samples", float64(len(samples)), "rounds")
	return nil
}
