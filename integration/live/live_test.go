package live

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	agentlive "github.com/clustral/clustral/agent/live"
	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// viewer follows an agent's live stream into a View, resuming after
// every break, as clustral ui does.
type viewer struct {
	user string
	hc   *http.Client
	base string

	mu      sync.Mutex
	view    agentlive.View
	inSnap  bool        // within a snapshot
	changes int         // changes applied outside snapshots
	ends    []time.Time // when each stream ended
	err     error       // a sequence error: fatal

	// cutAfter, if set, is closed once changes reaches cutAt.
	cutAt    int
	cutAfter chan struct{}
}

func (v *viewer) apply(e proto.LiveEvent) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.view.Apply(e); err != nil {
		return err
	}
	switch e.Type {
	case proto.LiveSnapshot:
		v.inSnap = true
	case proto.LiveSynced:
		v.inSnap = false
	case proto.LiveUpsert, proto.LiveDelete:
		if !v.inSnap {
			v.changes++
			if v.cutAfter != nil && v.changes == v.cutAt {
				close(v.cutAfter)
			}
		}
	}
	return nil
}

func (v *viewer) cursor() proto.LiveCursor {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.view.Cursor
}

// follow follows once, from since, until the stream ends or ctx is done.
func (v *viewer) follow(ctx context.Context, since proto.LiveCursor) error {
	err := agentlive.Follow(ctx, v.hc, v.base, since, v.apply)
	v.mu.Lock()
	defer v.mu.Unlock()
	v.ends = append(v.ends, time.Now())
	var se *agentlive.SequenceError
	if errors.As(err, &se) {
		v.err = err
	}
	return err
}

// run follows until ctx is done, from since, then resuming from the
// view's cursor.
func (v *viewer) run(ctx context.Context, since proto.LiveCursor) {
	for ctx.Err() == nil {
		err := v.follow(ctx, since)
		since = v.cursor()
		var se *agentlive.SequenceError
		if errors.As(err, &se) {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// state is the view's objects as kind/namespace/name → resourceVersion.
func (v *viewer) state() (map[string]string, bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make(map[string]string, len(v.view.Objects))
	for k, raw := range v.view.Objects {
		var o struct {
			Metadata struct {
				ResourceVersion string `json:"resourceVersion"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(raw, &o); err != nil {
			return nil, false, fmt.Errorf("object %s: %w", k, err)
		}
		out[k.String()] = o.Metadata.ResourceVersion
	}
	return out, v.view.Synced, v.err
}

func (v *viewer) endedAfter(t0 time.Time) (time.Time, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range v.ends {
		if e.After(t0) {
			return e, true
		}
	}
	return time.Time{}, false
}

// liveKinds are the kinds the agent follows (its defaults).
var liveKinds = func() []agentlive.Kind {
	k, err := agentlive.ParseKinds(nil)
	if err != nil {
		panic(err)
	}
	return k
}()

// listed is what u's own client lists through the proxy, as kubectl get
// does, for every followed kind: cluster-wide where u may, else in each
// of namespaces; a kind u may not list contributes nothing.
func listed(ctx context.Context, cfg *rest.Config, namespaces []string) (map[string]string, error) {
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string)
	for _, k := range liveKinds {
		scopes := []string{""}
		l, err := dc.Resource(k.GVR).List(ctx, metav1.ListOptions{})
		if apierrors.IsForbidden(err) && k.Namespaced {
			scopes = namespaces
		} else if apierrors.IsForbidden(err) {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("list %s: %w", k.Name, err)
		}
		for _, ns := range scopes {
			if ns != "" {
				l, err = dc.Resource(k.GVR).Namespace(ns).List(ctx, metav1.ListOptions{})
				if apierrors.IsForbidden(err) {
					continue
				} else if err != nil {
					return nil, fmt.Errorf("list %s in %s: %w", k.Name, ns, err)
				}
			}
			for _, o := range l.Items {
				key := proto.LiveKey{Kind: k.Name, Namespace: o.GetNamespace(), Name: o.GetName()}
				out[key.String()] = o.GetResourceVersion()
			}
		}
	}
	return out, nil
}

func diff(got, want map[string]string) string {
	var d []string
	for k, rv := range want {
		if g, ok := got[k]; !ok {
			d = append(d, "missing "+k)
		} else if g != rv {
			d = append(d, fmt.Sprintf("stale %s (rv %s, want %s)", k, g, rv))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			d = append(d, "extra "+k)
		}
	}
	slices.Sort(d)
	if len(d) > 8 {
		d = append(d[:8], fmt.Sprintf("and %d more", len(d)-8))
	}
	return strings.Join(d, "; ")
}

// applyLiveRBAC applies the live view's RBAC exactly as shipped.
func applyLiveRBAC(t *testing.T) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	manifest := filepath.Join(filepath.Dir(file), "..", "..", "deploy", "agent", "components", "live-view", "rbac.yaml")
	kc := suite.Env.APIServer.Kubeconfig
	if out, err := exec.CommandContext(t.Context(), "kubectl", "--kubeconfig", kc, "apply", "-f", manifest).CombinedOutput(); err != nil {
		t.Fatalf("apply %s: %v\n%s", manifest, err, out)
	}
	t.Cleanup(func() {
		exec.Command("kubectl", "--kubeconfig", kc, "delete", "--ignore-not-found", "-f", manifest).Run()
	})
}

// watchers is the apiserver's count of open watches per resource.
func watchers(t *testing.T) map[string]float64 {
	t.Helper()
	w, err := suite.Env.APIServer.Watches(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// startLive starts a KWOK node, the live view's RBAC as shipped, a mesh
// and an agent with --live, whose live-view log lines t's failure shows.
func startLive(t *testing.T) *harness.Mesh {
	t.Helper()
	if err := suite.KWOK(t).CreateNode(t.Context()); err != nil {
		t.Fatal(err)
	}
	applyLiveRBAC(t)
	m := suite.NewMesh(t)
	agent := suite.StartAgent(t, m.JoinToken, "--live", "--log-level", "debug")
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(agent.Proc.LogPath())
			for _, l := range strings.Split(string(b), "\n") {
				if strings.Contains(l, "live view") {
					t.Log("agent:", l)
				}
			}
		}
	})
	return m
}

// TestLiveView: three users with different access, 100 viewers among
// them, a few hundred objects created, updated and deleted: every
// viewer's state equals, object for object, what its user lists through
// the proxy; the apiserver sees one watch per kind from the agent
// whatever the number of viewers; viewers cut mid-update resume without
// a missed or repeated object; a RoleBinding removed empties its user's
// view within the review cache's lifetime; a revoked user's streams end
// within 1 s.
func TestLiveView(t *testing.T) {
	ctx := t.Context()
	admin := suite.Env.APIServer.Client()
	m := startLive(t)
	nsA, nsB := suite.NewNamespace(t), suite.NewNamespace(t)
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "ns-readers", Namespace: nsA},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: nsReaders}},
	}
	if _, err := admin.RbacV1().RoleBindings(nsA).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	type user struct {
		*harness.TestUser
		cfg *rest.Config
		hc  *http.Client
	}
	// Users appear at the coordinator with their first login; roles are
	// assigned then, and the tunnels come up with them.
	var logged []*harness.TestUser
	for _, d := range []harness.DexUser{alice, bob, dave} {
		u := suite.NewUser(t, d)
		u.MustLogin()
		logged = append(logged, u)
	}
	m.Assign(t, alice.Email, harness.ViewerRole.Name)
	m.Assign(t, bob.Email, nsReader.Name)
	daveAsg := m.Assign(t, dave.Email, noEvents.Name)
	users := make(map[string]*user)
	for _, u := range logged {
		u.MustUp()
		cfg := u.RESTConfig()
		hc, err := rest.HTTPClientFor(cfg)
		if err != nil {
			t.Fatal(err)
		}
		users[u.Email] = &user{TestUser: u, cfg: cfg, hc: hc}
	}
	namespaces := []string{nsA, nsB}

	vctx, stopViewers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { stopViewers(); wg.Wait() })
	emails := []string{alice.Email, bob.Email, dave.Email}
	newViewer := func(i int) *viewer {
		u := users[emails[i%3]]
		return &viewer{user: u.Email, hc: u.hc, base: u.cfg.Host}
	}
	allSynced := func(vs []*viewer) func(context.Context) error {
		return func(context.Context) error {
			for _, v := range vs {
				if _, synced, err := v.state(); err != nil {
					t.Fatalf("viewer of %s: %v", v.user, err)
				} else if !synced {
					return fmt.Errorf("a viewer of %s has no snapshot yet", v.user)
				}
			}
			return nil
		}
	}

	// One viewer first: the agent's watches are open once it has a
	// snapshot. Then 99 more change nothing at the apiserver.
	viewers := []*viewer{newViewer(0)}
	wg.Go(func() { viewers[0].run(vctx, proto.LiveCursor{}) })
	harness.MustEventually(t, 60*time.Second, allSynced(viewers))
	before := watchers(t)
	for i := 1; i < 100; i++ {
		v := newViewer(i)
		viewers = append(viewers, v)
		wg.Go(func() { v.run(vctx, proto.LiveCursor{}) })
	}
	harness.MustEventually(t, 60*time.Second, allSynced(viewers))
	after := watchers(t)
	for _, k := range liveKinds {
		r := k.GVR.Resource
		if before[r] < 1 {
			t.Errorf("the apiserver has %v watches of %s with the agent's view open, want at least its one", before[r], r)
		}
		if after[r] != before[r] {
			t.Errorf("watches of %s: %v with 1 viewer, %v with 100: want no watch per viewer", r, before[r], after[r])
		}
	}
	for _, k := range liveKinds {
		t.Logf("watches of %s: %v with 1 viewer, %v with 100", k.GVR.Resource, before[k.GVR.Resource], after[k.GVR.Resource])
	}

	// Two more viewers are cut mid-update, after 20 changes of the first
	// half of the churn, and resume while it goes on: one from its
	// cursor, one from a snapshot.
	cutCursor, cutSnapshot := newViewer(0), newViewer(1)
	var cutDone sync.WaitGroup
	for _, c := range []struct {
		v        *viewer
		snapshot bool
	}{{cutCursor, false}, {cutSnapshot, true}} {
		c.v.cutAt, c.v.cutAfter = 20, make(chan struct{})
		cutDone.Add(1)
		wg.Go(func() {
			fctx, cut := context.WithCancel(vctx)
			go func() {
				select {
				case <-c.v.cutAfter:
				case <-vctx.Done():
				}
				cut()
			}()
			c.v.follow(fctx, proto.LiveCursor{})
			cut()
			cutDone.Done()
			since := c.v.cursor()
			if c.snapshot {
				since = proto.LiveCursor{}
			}
			c.v.run(vctx, since)
		})
	}
	viewers = append(viewers, cutCursor, cutSnapshot)

	// The churn: a few hundred objects created, a tenth updated, a tenth
	// deleted, in two namespaces.
	for n, ns := range namespaces {
		if n == 1 {
			// The second half goes on after both cuts.
			cut := make(chan struct{})
			go func() { cutDone.Wait(); close(cut) }()
			testkit.Recv(t, cut, "the viewers to cut to be cut")
		}
		for i := range 30 {
			name := fmt.Sprintf("p%d", i)
			if _, err := admin.CoreV1().Pods(ns).Create(ctx, harness.FakePod(ns, name), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s%d", i)},
				Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Port: 80}}}}
			if _, err := admin.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("e%d", i)},
				InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: name},
				Reason:         "Tested", Message: "live view test", Type: corev1.EventTypeNormal}
			if _, err := admin.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			if i < 20 {
				labels := map[string]string{"app": fmt.Sprintf("d%d", i)}
				d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("d%d", i)},
					Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels},
						Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
							Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/fake:latest"}}}}}}
				if _, err := admin.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
		}
		for i := range 11 {
			patch := []byte(`{"metadata":{"labels":{"updated":"yes"}}}`)
			if _, err := admin.CoreV1().Services(ns).Patch(ctx, fmt.Sprintf("s%d", i), types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
			if _, err := admin.AppsV1().Deployments(ns).Patch(ctx, fmt.Sprintf("d%d", i), types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := admin.CoreV1().Pods(ns).Delete(ctx, fmt.Sprintf("p%d", 29-i), *metav1.NewDeleteOptions(0)); err != nil {
				t.Fatal(err)
			}
			if err := admin.CoreV1().Events(ns).Delete(ctx, fmt.Sprintf("e%d", i), metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Every viewer holds what its user lists.
	harness.MustEventually(t, 90*time.Second, func(ctx context.Context) error {
		want := make(map[string]map[string]string)
		for email, u := range users {
			l, err := listed(ctx, u.cfg, namespaces)
			if err != nil {
				return err
			}
			want[email] = l
		}
		for i, v := range viewers {
			got, _, err := v.state()
			if err != nil {
				t.Fatalf("viewer %d of %s: %v", i, v.user, err)
			}
			if d := diff(got, want[v.user]); d != "" {
				return fmt.Errorf("viewer %d of %s differs from what the user lists: %s", i, v.user, d)
			}
		}
		return nil
	})
	for email, u := range users {
		l, err := listed(ctx, u.cfg, namespaces)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s holds %d objects", email, len(l))
	}
	// And kubectl itself agrees, for the kinds of the churn in namespace
	// A: what each user's `kubectl get` prints is what their viewers hold
	// there, forbidden (dave's events) being nothing.
	for _, v := range viewers[:3] {
		got, _, _ := v.state()
		for _, kind := range []string{"pods", "services", "deployments.apps", "events"} {
			res, err := users[v.user].RunKubectl("get", kind, "-n", nsA, "-o", `jsonpath={range .items[*]}{.metadata.name}@{.metadata.resourceVersion}{"\n"}{end}`)
			var want []string
			if err != nil && !strings.Contains(res.Stderr, "Forbidden") {
				t.Fatalf("%s: kubectl get %s: %v", v.user, kind, err)
			} else if err == nil {
				want = strings.Fields(res.Stdout)
			}
			var have []string
			for k, rv := range got {
				if p := kind + "/" + nsA + "/"; strings.HasPrefix(k, p) {
					have = append(have, strings.TrimPrefix(k, p)+"@"+rv)
				}
			}
			slices.Sort(want)
			slices.Sort(have)
			if !slices.Equal(have, want) {
				t.Errorf("%s: kubectl get %s -n %s prints %d objects, the view holds %d: %s", v.user, kind, nsA, len(want), len(have),
					diff(toMap(have), toMap(want)))
			}
		}
	}

	// A RoleBinding removed: bob's viewers lose namespace A.
	if err := admin.RbacV1().RoleBindings(nsA).Delete(ctx, rb.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	harness.MustEventually(t, agentlive.DefaultReviewTTL+5*time.Second, func(context.Context) error {
		for _, v := range viewers {
			if v.user != bob.Email {
				continue
			}
			got, _, _ := v.state()
			if len(got) != 0 {
				return fmt.Errorf("a viewer of bob still holds %d objects after his RoleBinding was removed", len(got))
			}
		}
		return nil
	})
	if took := time.Since(removed); took > agentlive.DefaultReviewTTL+time.Second {
		t.Errorf("bob's views emptied %v after the RoleBinding was removed, want within the cache's lifetime (%v)", took, agentlive.DefaultReviewTTL)
	} else {
		t.Logf("bob's views emptied %v after the RoleBinding was removed", took)
	}

	// Dave revoked: every stream of his ends within 1 s.
	m.Admin.MustAPI("DELETE", "/api/v1/assignments/"+daveAsg.ID, nil, nil)
	revoked := time.Now()
	harness.MustEventually(t, 10*time.Second, func(context.Context) error {
		var worst time.Duration
		for _, v := range viewers {
			if v.user != dave.Email {
				continue
			}
			end, ok := v.endedAfter(revoked)
			if !ok {
				return errors.New("a stream of dave's is still open after the revocation")
			}
			worst = max(worst, end.Sub(revoked))
		}
		t.Logf("dave's streams ended at most %v after the revoke call returned", worst)
		if worst > time.Second {
			t.Errorf("dave's last stream ended %v after the revocation, want within 1s", worst)
		}
		return nil
	})
}

// toMap reads name@resourceVersion lines as diff takes them.
func toMap(lines []string) map[string]string {
	m := make(map[string]string, len(lines))
	for _, l := range lines {
		name, rv, _ := strings.Cut(l, "@")
		m[name] = rv
	}
	return m
}
