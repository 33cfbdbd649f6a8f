package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	"github.com/clustral/clustral/agent/live"
	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// The live bench: viewers of the bench user, pods in its namespace, and
// changes timed to every viewer.
const (
	liveViewers = 1000
	livePods    = 200
	liveChanges = 50
	liveNS      = "bench-live"
)

// benchLive replaces the agent with one run with --live (as the shipped
// component grants it), opens liveViewers live streams as the bench user
// through the mesh, and reports:
//   - live_apiserver_watches: the watches the live agent added at the
//     apiserver (apiserver_longrunning_requests) with every viewer open;
//     it must equal the kinds followed plus the four RBAC kinds;
//   - live_agent_rss_mib_1000_viewers: the agent's resident memory then;
//   - live_fanout_p99_ms: liveChanges times, from the patch of a pod at
//     the apiserver until each viewer has decoded it, the 99th percentile
//     over every viewer and change.
//
// The viewers are one user's (the bench has one user with a tunnel), so
// reviews are answered from the cache after the first.
func benchLive(ctx context.Context, m *mesh, f flags) error {
	c := m.env.APIServer.Client()
	_, file, _, _ := runtime.Caller(0)
	manifest := filepath.Join(filepath.Dir(file), "..", "..", "..", "deploy", "agent", "components", "live-view", "rbac.yaml")
	if _, err := (harness.Kubectl{Kubeconfig: m.env.APIServer.Kubeconfig}).Run(ctx, "apply", "-f", manifest); err != nil {
		return fmt.Errorf("apply %s: %w", manifest, err)
	}
	if _, err := c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "bench-live-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list", "watch"}}},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	if err := harness.BindClusterRole(ctx, c, "bench-live-readers", "bench-live-reader", rbacv1.GroupKind, readerGroup); err != nil {
		return err
	}
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: liveNS}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	// No controller-manager runs here to make the namespace's default
	// service account, which pod admission wants.
	if _, err := c.CoreV1().ServiceAccounts(liveNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	for i := range livePods {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", i)},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/fake:latest"}}}}
		if _, err := c.CoreV1().Pods(liveNS).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return err
		}
	}

	before, err := apiserverWatches(ctx, m)
	if err != nil {
		return err
	}
	progress("replacing the agent with one run with --live")
	m.agent.Proc.Stop()
	if m.agent, err = m.startAgent(ctx, "--live"); err != nil {
		return err
	}
	// The user's context comes back once the new agent is in the map.
	var cfg *rest.Config
	if err := harness.Eventually(ctx, time.Minute, func(context.Context) error {
		cfg, err = meshConfig(m)
		return err
	}); err != nil {
		return err
	}
	hc, err := live.HTTPClient(cfg) // as the console's
	if err != nil {
		return err
	}

	progress("opening %d live streams", liveViewers)
	var (
		wg     sync.WaitGroup
		synced sync.WaitGroup
		failed atomic.Pointer[error]
		mu     sync.Mutex
		seen   = make(map[string][]time.Time) // p0's resourceVersion → when each viewer decoded it
	)
	// The viewers follow until vctx ends: stop them first, then wait
	// (deferred calls run last first), or an early return waits forever.
	defer wg.Wait()
	vctx, stop := context.WithCancel(ctx)
	defer stop()
	synced.Add(liveViewers)
	for range liveViewers {
		wg.Go(func() {
			var view live.View
			first := true
			for vctx.Err() == nil {
				err := live.Follow(vctx, hc, cfg.Host, view.Cursor, func(e proto.LiveEvent) error {
					if err := view.Apply(e); err != nil {
						return err
					}
					if e.Type == proto.LiveSynced && first {
						first = false
						synced.Done()
					}
					if e.Type == proto.LiveUpsert && e.Name == "p0" && !first {
						var o struct {
							Metadata struct {
								ResourceVersion string `json:"resourceVersion"`
							} `json:"metadata"`
						}
						if err := json.Unmarshal(e.Object, &o); err != nil {
							return err
						}
						now := time.Now()
						mu.Lock()
						seen[o.Metadata.ResourceVersion] = append(seen[o.Metadata.ResourceVersion], now)
						mu.Unlock()
					}
					return nil
				})
				var se *live.SequenceError
				if errors.As(err, &se) {
					failed.Store(&err)
					return
				}
			}
		})
	}
	syncedc := make(chan struct{})
	go func() { synced.Wait(); close(syncedc) }()
	select {
	case <-syncedc:
	case <-time.After(3 * time.Minute):
		return errors.New("the live streams did not all get their snapshot within 3 minutes")
	case <-ctx.Done():
		return ctx.Err()
	}
	if e := failed.Load(); e != nil {
		return *e
	}
	after, err := apiserverWatches(ctx, m)
	if err != nil {
		return err
	}
	rss, err := rssMiB(m.agent.Proc.Pid())
	if err != nil {
		return err
	}

	progress("%d changes to %d viewers", liveChanges, liveViewers)
	pods := c.CoreV1().Pods(liveNS)
	var samples []time.Duration
	for i := range liveChanges {
		t0 := time.Now()
		p, err := pods.Patch(ctx, "p0", types.MergePatchType, []byte(fmt.Sprintf(`{"metadata":{"labels":{"round":"r%d"}}}`, i)), metav1.PatchOptions{})
		if err != nil {
			return err
		}
		for n := 0; n < liveViewers; {
			if time.Since(t0) > 30*time.Second {
				return fmt.Errorf("change %d: %d of %d viewers have it after 30s", i+1, n, liveViewers)
			}
			time.Sleep(2 * time.Millisecond)
			mu.Lock()
			n = len(seen[p.ResourceVersion])
			mu.Unlock()
		}
		mu.Lock()
		for _, at := range seen[p.ResourceVersion] {
			samples = append(samples, at.Sub(t0))
		}
		mu.Unlock()
	}
	stop()
	report("live_apiserver_watches", after-before, "watches")
	report("live_agent_rss_mib_1000_viewers", rss, "MiB")
	report("live_fanout_p99_ms", ms(percentile(samples, 99)), "ms")
	report("live_fanout_p50_ms", ms(percentile(samples, 50)), "ms")
	return nil
}

// apiserverWatches is the apiserver's count of open watches.
func apiserverWatches(ctx context.Context, m *mesh) (float64, error) {
	w, err := m.env.APIServer.Watches(ctx)
	n := 0.0
	for _, v := range w {
		n += v
	}
	return n, err
}

// rssMiB is the resident memory of process pid.
func rssMiB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS of %d: %w", pid, err)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
