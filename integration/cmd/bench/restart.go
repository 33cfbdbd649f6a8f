package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kwatch "k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// benchRestart measures revocation_after_restart_ms: the bench user
// watches configmaps through the mesh; the coordinator is killed with
// SIGKILL, kept down for -restart-outage, and started again; as soon as
// its /readyz answers, the user's assignment is deleted, and the time is
// taken from the start of that call until the watch through the mesh
// ends (the agent, on its map stream's next attempt, learns of the
// revocation and resets the user's connections). The outage checks that
// the watch lived through it. It is one sample: where in its wait between
// attempts the agent is when the coordinator turns ready decides it, so
// it falls anywhere from a few ms to the backoff's cap (800ms) and a
// little more.
func benchRestart(ctx context.Context, m *mesh, f flags) error {
	if f.restartOutage <= 0 {
		return nil
	}
	if err := m.ensureGranted(ctx); err != nil {
		return err
	}
	probe, err := getProbe(ctx, m, true)
	if err != nil {
		return err
	}
	if err := until(ctx, 30*time.Second, func() bool { return probe() == nil }); err != nil {
		return fmt.Errorf("before the restart, GET through the mesh: %w", err)
	}
	cfg, err := meshConfig(m)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wt, err := cs.CoreV1().ConfigMaps("default").Watch(wctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("watch through the mesh: %w", err)
	}
	defer wt.Stop()
	w := followWatch(wt)
	// The watch starts with an ADDED event per existing configmap.
	if err := w.waitFor(configMap, 10*time.Second); err != nil {
		return fmt.Errorf("watch through the mesh: %w", err)
	}

	progress("killing the coordinator for %v", f.restartOutage)
	m.coord.Proc.Kill()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(f.restartOutage):
	}
	admin := m.env.APIServer.Client()
	name := fmt.Sprintf("during-outage-%d", time.Now().UnixNano())
	if _, err := admin.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	defer admin.CoreV1().ConfigMaps("default").Delete(context.Background(), name, metav1.DeleteOptions{})
	if err := w.waitFor(name, 10*time.Second); err != nil {
		return fmt.Errorf("the watch did not live through the outage: %w", err)
	}

	if err := m.coord.Start(ctx); err != nil {
		return fmt.Errorf("restart the coordinator: %w", err)
	}
	t0 := time.Now()
	if err := m.revoke(ctx); err != nil {
		return err
	}
	progress("the revocation call took %v", time.Since(t0).Round(time.Millisecond))
	var end time.Time
	select {
	case end = <-w.ended:
	case <-time.After(30 * time.Second):
		return errors.New("after the revocation, the watch through the mesh is still open after 30s")
	}
	if end.Before(t0) {
		return fmt.Errorf("the watch through the mesh ended %v before the revocation, by itself", t0.Sub(end))
	}
	report("revocation_after_restart_ms", ms(end.Sub(t0)), "ms")
	report("restart_outage_s", f.restartOutage.Seconds(), "s")

	// Leave the bench user as the other measurements expect.
	if err := m.grant(ctx); err != nil {
		return err
	}
	return until(ctx, 30*time.Second, func() bool { return probe() == nil })
}

// followedWatch reads a configmap watch as it goes: the names its events
// are about, and when it ended (closed, or an error event).
type followedWatch struct {
	names chan string
	ended chan time.Time
}

func followWatch(w kwatch.Interface) *followedWatch {
	f := &followedWatch{names: make(chan string, 64), ended: make(chan time.Time, 1)}
	go func() {
		for ev := range w.ResultChan() {
			if ev.Type == kwatch.Error {
				break
			}
			if cm, ok := ev.Object.(*corev1.ConfigMap); ok {
				select {
				case f.names <- cm.Name:
				default:
				}
			}
		}
		f.ended <- time.Now()
	}()
	return f
}

// waitFor waits for an event about the configmap name.
func (f *followedWatch) waitFor(name string, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		select {
		case n := <-f.names:
			if n == name {
				return nil
			}
		case end := <-f.ended:
			f.ended <- end
			return fmt.Errorf("watch ended before an event about %s", name)
		case <-deadline:
			return fmt.Errorf("no event about %s within %v", name, timeout)
		}
	}
}

// until calls ok until it holds, for at most timeout.
func until(ctx context.Context, timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not done within %v", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}
