package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/rest"

	"github.com/clustral/clustral/cli/device"
	"github.com/clustral/clustral/integration/harness"
)

// benchUp takes the user down and up f.upRounds times, timing from
// invoking `clustral up` until kubectl first gets an answer through the
// mesh, and breaks that time into stages (up_stage_*_ms, medians): the
// device's own steps from its state file (device.State.Stages), up
// returning, and kubectl. Beside them: up_device_cpu_ms, the CPU time
// the background process used from its start until connected, which a
// busy machine disturbs less than the times; up_handshake_at_ms, when the
// device's handshake with the agent completed; kubectl_client_ms, a
// kubectl that needs no server (`kubectl version --client`);
// kubectl_again_ms, the same request as the first once up is warm; and
// kubectl_direct_ms, that request straight to kube-apiserver: the floor
// of the kubectl stage, and up_to_first_kubectl_over_direct_ms what the
// median first answer takes beyond it.
func benchUp(ctx context.Context, m *mesh, f flags) error {
	if f.upRounds <= 0 {
		return nil
	}
	progress("%d down/up rounds", f.upRounds)
	k := m.user.Kubectl()
	k.Timeout = 20 * time.Second
	direct := harness.Kubectl{Kubeconfig: m.env.APIServer.Kubeconfig, Timeout: k.Timeout}
	var first, upOnly, client, again, straight, handshake, cpu []time.Duration
	cold := map[string][]time.Duration{}
	var coldOrder []string
	stages := map[string][]time.Duration{}
	var order []string
	for i := range f.upRounds {
		if err := m.user.Down(ctx); err != nil {
			return err
		}
		start := time.Now()
		if err := m.user.Up(ctx); err != nil {
			return err
		}
		up := time.Since(start)
		d, err := firstKubectl(ctx, k, start)
		if err != nil {
			return err
		}
		st, err := upState(m.user)
		if err != nil {
			return err
		}
		if n := len(st.Stages); n > 0 && st.Stages[n-1].CPU > 0 {
			cpu = append(cpu, st.Stages[n-1].CPU)
		}
		prev := start
		for _, s := range append(st.Stages, device.Stage{Name: "returned", At: start.Add(up)}, device.Stage{Name: "kubectl", At: start.Add(d)}) {
			if _, ok := stages[s.Name]; !ok {
				order = append(order, s.Name)
			}
			stages[s.Name] = append(stages[s.Name], s.At.Sub(prev))
			prev = s.At
		}
		if hs, err := agentHandshake(ctx, m.user); err != nil {
			progress("round %d: %v", i+1, err)
		} else {
			handshake = append(handshake, hs.Sub(start))
			if n := len(st.Stages); n > 0 {
				progress("round %d: handshake with the agent %v after %s", i+1, hs.Sub(st.Stages[n-1].At).Round(time.Millisecond), st.Stages[n-1].Name)
			}
		}
		t := time.Now()
		if _, err := k.Run(ctx, "version", "--client"); err != nil {
			return err
		}
		client = append(client, time.Since(t))
		t = time.Now()
		if _, err := k.Run(ctx, "--context", kubeContext, "get", "--raw", "/version"); err != nil {
			return err
		}
		again = append(again, time.Since(t))
		t = time.Now()
		if _, err := direct.Run(ctx, "get", "--raw", "/version"); err != nil {
			return err
		}
		straight = append(straight, time.Since(t))
		for _, c := range []struct {
			name string
			cfg  func() (*rest.Config, error)
		}{
			{"mesh", func() (*rest.Config, error) { return meshConfig(m) }},
			{"direct", func() (*rest.Config, error) { return m.env.APIServer.Config(), nil }},
		} {
			cfg, err := c.cfg()
			if err != nil {
				return err
			}
			ph, err := coldGet(ctx, cfg)
			if err != nil {
				return fmt.Errorf("cold GET %s: %w", c.name, err)
			}
			for i, p := range ph {
				name := "cold_get_" + c.name + "_" + coldPhases[i] + "_ms"
				if _, ok := cold[name]; !ok {
					coldOrder = append(coldOrder, name)
				}
				cold[name] = append(cold[name], p)
			}
		}
		progress("round %d: up returned after %v, first kubectl answer after %v", i+1, up.Round(time.Millisecond), d.Round(time.Millisecond))
		first, upOnly = append(first, d), append(upOnly, up)
	}
	report("up_to_first_kubectl_ms", ms(percentile(first, 50)), "ms")
	report("up_to_first_kubectl_max_ms", ms(percentile(first, 100)), "ms")
	report("up_returns_ms", ms(percentile(upOnly, 50)), "ms")
	for _, name := range order {
		report("up_stage_"+name+"_ms", ms(percentile(stages[name], 50)), "ms")
	}
	if len(cpu) > 0 {
		report("up_device_cpu_ms", ms(percentile(cpu, 50)), "ms")
	}
	report("up_handshake_at_ms", ms(percentile(handshake, 50)), "ms")
	report("kubectl_client_ms", ms(percentile(client, 50)), "ms")
	report("kubectl_again_ms", ms(percentile(again, 50)), "ms")
	report("kubectl_direct_ms", ms(percentile(straight, 50)), "ms")
	// What up costs beyond the floor a kubectl process sets, steadier
	// than either on a busy machine.
	report("up_to_first_kubectl_over_direct_ms", ms(percentile(first, 50)-percentile(straight, 50)), "ms")
	for _, name := range coldOrder {
		report(name, ms(percentile(cold[name], 50)), "ms")
	}
	report("up_samples", float64(len(first)), "rounds")
	return nil
}

// coldPhases name the phases coldGet times.
var coldPhases = []string{"dial", "tls", "response"}

// coldGet GETs /version with cfg on a new connection and returns how
// long its phases took: the dial (through the SOCKS5 proxy and the mesh,
// if cfg has one), the TLS handshake, and the request until the first
// byte of the answer.
func coldGet(ctx context.Context, cfg *rest.Config) ([]time.Duration, error) {
	// client-go shares a transport among configs alike, unless one has
	// a Proxy func (as a context with proxy-url does): give it one, so
	// the transport and its connection are new, as in a new kubectl.
	cfg = rest.CopyConfig(cfg)
	if cfg.Proxy == nil {
		cfg.Proxy = func(*http.Request) (*url.URL, error) { return nil, nil }
	}
	rt, err := rest.TransportFor(cfg)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: rt, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	var start, tlsStart, tlsDone, first time.Time
	trace := &httptrace.ClientTrace{
		TLSHandshakeStart:    func() { tlsStart = time.Now() },
		TLSHandshakeDone:     func(tls.ConnectionState, error) { tlsDone = time.Now() },
		GotFirstResponseByte: func() { first = time.Now() },
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), "GET", cfg.Host+"/version", nil)
	if err != nil {
		return nil, err
	}
	start = time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /version: %s", resp.Status)
	}
	if tlsStart.IsZero() || tlsDone.IsZero() || first.IsZero() {
		return nil, errors.New("GET /version reused a connection")
	}
	return []time.Duration{tlsStart.Sub(start), tlsDone.Sub(tlsStart), first.Sub(tlsDone)}, nil
}

// upState reads the state file of u's running `clustral up`.
func upState(u *harness.User) (*device.State, error) {
	var st device.State
	b, err := os.ReadFile(filepath.Join(u.Dir, "config", "profiles", "default", device.StateFile))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", device.StateFile, err)
	}
	return &st, nil
}

// agentHandshake asks u's `clustral up` when its last handshake with
// an agent completed.
func agentHandshake(ctx context.Context, u *harness.User) (time.Time, error) {
	out, _, err := u.Run(ctx, "status", "-o", "json")
	if err != nil {
		return time.Time{}, err
	}
	var st struct {
		Agents []device.AgentView `json:"agents"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return time.Time{}, fmt.Errorf("clustral status: %w", err)
	}
	for _, a := range st.Agents {
		if !a.LastHandshake.IsZero() {
			return a.LastHandshake, nil
		}
	}
	return time.Time{}, errors.New("clustral status: no handshake with an agent")
}

// firstKubectl runs kubectl through the mesh until it succeeds and
// returns the time since start.
func firstKubectl(ctx context.Context, k harness.Kubectl, start time.Time) (time.Duration, error) {
	deadline := start.Add(30 * time.Second)
	for {
		_, err := k.Run(ctx, "--context", kubeContext, "get", "--raw", "/version")
		if err == nil {
			return time.Since(start), nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return 0, fmt.Errorf("kubectl after up: %w", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// benchDelta revokes and grants the user's assignment f.deltaRounds times
// while the user is up, timing from the call to the coordinator until a
// GET on a new connection through the mesh first fails, and until one
// first succeeds again. Probes run back to back with a short timeout, so
// a connection attempt that hangs (a SYN dropped while only one end knows
// the other) is retried rather than waited out; the time reported is when
// the deciding probe started.
func benchDelta(ctx context.Context, m *mesh, f flags) error {
	if f.deltaRounds <= 0 {
		return nil
	}
	probe, err := getProbe(ctx, m, true)
	if err != nil {
		return err
	}
	// until probes back to back until ok(probe()) and returns when the
	// first probe that satisfied ok started, relative to start, and the
	// probe's error.
	until := func(start time.Time, ok func(error) bool) (time.Duration, error, error) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			t := time.Now()
			err := probe()
			if ok(err) {
				return t.Sub(start), err, nil
			}
			if ctx.Err() != nil {
				return 0, nil, ctx.Err()
			}
			if time.Now().After(deadline) {
				return 0, nil, fmt.Errorf("timed out; last probe: %v", err)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if err := probe(); err != nil {
		return fmt.Errorf("probe before revoking: %w", err)
	}
	progress("%d revoke/grant rounds", f.deltaRounds)
	var revoked, granted []time.Duration
	for i := range f.deltaRounds {
		start := time.Now()
		if err := m.revoke(ctx); err != nil {
			return err
		}
		r, why, err := until(start, func(err error) bool { return err != nil })
		if err != nil {
			return fmt.Errorf("waiting for revocation: %w", err)
		}
		start = time.Now()
		if err := m.grant(ctx); err != nil {
			return err
		}
		g, _, err := until(start, func(err error) bool { return err == nil })
		if err != nil {
			return fmt.Errorf("waiting for grant: %w", err)
		}
		progress("round %d: denied %v after revoke (%v), answered %v after grant", i+1, r.Round(time.Microsecond), why, g.Round(time.Microsecond))
		revoked, granted = append(revoked, r), append(granted, g)
	}
	report("coordinator_map_delta_ms", ms(percentile(granted, 50)), "ms")
	report("coordinator_map_delta_max_ms", ms(percentile(granted, 100)), "ms")
	report("revoke_to_denied_ms", ms(percentile(revoked, 50)), "ms")
	report("revoke_to_denied_max_ms", ms(percentile(revoked, 100)), "ms")
	report("map_delta_samples", float64(len(granted)), "rounds")
	return nil
}

// probeTimeout bounds one revoke/grant probe. A longer one shows how long
// a client that does not retry waits when its first SYN is dropped.
var probeTimeout = 250 * time.Millisecond

// benchGrant revokes and grants the user's assignment f.grantRounds times
// while a client keeps sending GETs on new connections through the mesh,
// so the device has traffic for the agent at the very moment both learn
// of each other again, and each first handshake can cross the agent's.
// It times from the grant call until the first GET that succeeds has its
// answer, and reports the worst round and how many took over a second.
func benchGrant(ctx context.Context, m *mesh, f flags) error {
	if f.grantRounds <= 0 {
		return nil
	}
	if err := m.ensureGranted(ctx); err != nil {
		return err
	}
	// The user's kubeconfig context is back once the device's map has
	// the agent again (the bench before may have just granted).
	if _, err := firstKubectl(ctx, m.user.Kubectl(), time.Now()); err != nil {
		return err
	}
	probe, err := getProbe(ctx, m, true)
	if err != nil {
		return err
	}
	until := func(ok func(error) bool) (time.Time, error) { return probeUntil(ctx, probe, ok) }
	if _, err := until(func(err error) bool { return err == nil }); err != nil {
		return fmt.Errorf("probe before revoking: %w", err)
	}
	progress("%d revoke/grant rounds with traffic at the grant", f.grantRounds)
	samples := make([]time.Duration, 0, f.grantRounds)
	over := 0
	for i := range f.grantRounds {
		if err := m.revoke(ctx); err != nil {
			return err
		}
		if _, err := until(func(err error) bool { return err != nil }); err != nil {
			return fmt.Errorf("round %d: waiting for the refusal: %w", i+1, err)
		}
		// The probes run from before the grant is asked for until one
		// succeeds: the device sends as soon as its map lets it.
		granted := make(chan error, 1)
		start := time.Now()
		go func() { granted <- m.grant(ctx) }()
		end, err := until(func(err error) bool { return err == nil })
		if gerr := <-granted; gerr != nil {
			return fmt.Errorf("round %d: grant: %w", i+1, gerr)
		}
		if err != nil {
			return fmt.Errorf("round %d: waiting for the first answer: %w", i+1, err)
		}
		d := end.Sub(start)
		samples = append(samples, d)
		if d > time.Second {
			over++
			progress("round %d: first answer %v after the grant", i+1, d.Round(time.Millisecond))
		}
	}
	report("grant_first_request_p50_ms", ms(percentile(samples, 50)), "ms")
	report("grant_first_request_max_ms", ms(percentile(samples, 100)), "ms")
	report("grant_rounds_over_1s", float64(over), "rounds")
	report("grant_rounds", float64(len(samples)), "rounds")
	return nil
}
