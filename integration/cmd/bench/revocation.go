package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// The crowd benchRevocation measures in: simulated users, each with
// devicesPerUser devices that register and hold their map streams open.
// Their users hold the bench role too, so the agent's map and the
// coordinator's deltas carry them.
const (
	devicesPerUser  = 50
	revocationRound = 120
)

// crowdUsers is how many simulated users the crowd has: enough for
// -revocation-devices devices (set by main).
var crowdUsers = 20

// benchRevocation measures how long revocation takes to bite with
// f.revocationDevices other devices connected: crowdUsers users log in
// with Dex ID tokens and register devicesPerUser devices each, with
// random WireGuard keys, are assigned the bench role, and each device
// opens its map stream. Then, revocationRound times, it assigns the
// bench user the role, waits until a GET through the mesh on a warm
// client-go connection succeeds, deletes the assignment, and times from
// the start of the delete call until the first GET through the mesh is
// refused (any answer but 200, or a connection error). It reports the
// median and the 99th percentile.
func benchRevocation(ctx context.Context, m *mesh, f flags) error {
	start := time.Now()
	tokens, err := m.crowd(ctx)
	if err != nil {
		return fmt.Errorf("simulated devices: %w", err)
	}
	progress("%d simulated devices registered in %v", len(tokens), time.Since(start).Round(time.Millisecond))
	sctx, cancel := context.WithCancel(ctx)
	w := newWatch(len(tokens), nil)
	defer func() {
		cancel()
		w.wg.Wait()
	}()
	if err := w.open(sctx, []string{m.coord.URL}, tokens, 0); err != nil {
		return fmt.Errorf("simulated devices' map streams: %w", err)
	}
	progress("%d simulated devices connected", len(tokens))

	probe, err := getProbe(ctx, m, false)
	if err != nil {
		return err
	}
	until := func(ok func(error) bool) (time.Time, error) { return probeUntil(ctx, probe, ok) }
	allowed := func(err error) bool { return err == nil }
	denied := func(err error) bool { return err != nil }

	if m.assignment != "" {
		if err := m.revoke(ctx); err != nil {
			return err
		}
	}
	progress("%d assign/revoke rounds", revocationRound)
	samples := make([]time.Duration, 0, revocationRound)
	for i := range revocationRound {
		if err := m.grant(ctx); err != nil {
			return err
		}
		if _, err := until(allowed); err != nil {
			return fmt.Errorf("round %d: waiting for the assignment: %w", i+1, err)
		}
		// Warm: a second GET on the same connection.
		if err := probe(); err != nil {
			return fmt.Errorf("round %d: warm GET: %w", i+1, err)
		}
		t0 := time.Now()
		if err := m.revoke(ctx); err != nil {
			return err
		}
		t1, err := until(denied)
		if err != nil {
			return fmt.Errorf("round %d: waiting for the refusal: %w", i+1, err)
		}
		samples = append(samples, t1.Sub(t0))
	}
	// Leave the bench user as the other measurements expect.
	if err := m.grant(ctx); err != nil {
		return err
	}
	report("revocation_to_denied_p50_ms", ms(percentile(samples, 50)), "ms")
	report("revocation_to_denied_p99_ms", ms(percentile(samples, 99)), "ms")
	report("revocation_to_denied_max_ms", ms(percentile(samples, 100)), "ms")
	report("revocation_samples", float64(len(samples)), "rounds")
	report("revocation_mesh_devices", float64(len(tokens)), "devices")
	select {
	case err := <-w.errc:
		return fmt.Errorf("simulated devices' map streams: %w", err)
	default:
	}
	return nil
}

// crowdDexUsers are the Dex users once crowd has run: the admin, the
// bench user and the crowd. Dex keeps only the users it is given, so a
// later restart must give them all again.
func crowdDexUsers() []harness.DexUser {
	users := []harness.DexUser{adminUser, benchUser}
	for i := range crowdUsers {
		users = append(users, harness.DexUser{Email: fmt.Sprintf("crowd-%02d@example.com", i), Password: "crowd-pw"})
	}
	return users
}

// crowd adds crowdUsers users to Dex (restarting it), logs each in with
// an ID token, assigns each the bench role, registers devicesPerUser
// devices for each, and returns the devices' node tokens.
func (m *mesh) crowd(ctx context.Context) ([]string, error) {
	users := crowdDexUsers()
	if err := m.env.Dex.Restart(ctx, users); err != nil {
		return nil, err
	}
	tokens := make([]string, crowdUsers*devicesPerUser)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, u := range users[2:] {
		g.Go(func() error {
			if err := m.crowdUser(gctx, u, tokens[i*devicesPerUser:(i+1)*devicesPerUser]); err != nil {
				return fmt.Errorf("%s: %w", u.Email, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var ds []proto.Device
	if err := m.api(ctx, "GET", "/api/v1/devices", nil, &ds); err != nil {
		return nil, err
	}
	if len(ds) < len(tokens) {
		return nil, fmt.Errorf("the coordinator lists %d devices, want at least %d", len(ds), len(tokens))
	}
	return tokens, nil
}

// crowdUser logs u in, assigns it the bench role and registers
// len(tokens) devices, writing their node tokens into tokens.
func (m *mesh) crowdUser(ctx context.Context, u harness.DexUser, tokens []string) error {
	idt, err := m.env.Dex.IDToken(ctx, u.Email, u.Password)
	if err != nil {
		return err
	}
	var s proto.Session
	if err := harness.CallAPI(ctx, m.coord.URL, "POST", proto.APIVersion+"/login/token", "", proto.TokenExchangeRequest{IDToken: idt}, &s); err != nil {
		return err
	}
	if err := m.api(ctx, "POST", "/api/v1/assignments", proto.Assignment{User: u.Email, Role: "reader", Cluster: cluster}, nil); err != nil {
		return err
	}
	for i := range tokens {
		var k proto.Key
		rand.Read(k[:]) // any 32 bytes are a Curve25519 public key
		req := proto.RegisterDeviceRequest{PublicKey: k, Hostname: fmt.Sprintf("sim-%d", i)}
		var resp proto.RegisterResponse
		if err := harness.CallAPI(ctx, m.coord.URL, "POST", proto.APIVersion+"/devices", s.Token, req, &resp); err != nil {
			return fmt.Errorf("device %d: %w", i, err)
		}
		tokens[i] = resp.NodeToken
	}
	return nil
}
