package live

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

func TestMain(m *testing.M) { testkit.VerifyNoLeaks(m) }

// fakeReviews answers every review with allow, and counts them.
type fakeReviews struct {
	n     atomic.Int64
	allow func(authorizationv1.SubjectAccessReviewSpec) bool
}

func (f *fakeReviews) Create(_ context.Context, sar *authorizationv1.SubjectAccessReview, _ metav1.CreateOptions) (*authorizationv1.SubjectAccessReview, error) {
	f.n.Add(1)
	out := sar.DeepCopy()
	out.Status.Allowed = f.allow == nil || f.allow(sar.Spec)
	return out, nil
}

func newTestSource(t testing.TB, maxDeltas int) *Source {
	t.Helper()
	s, err := New(Config{Client: dynamicfake.NewSimpleDynamicClient(runtime.NewScheme()), Reviews: &fakeReviews{}, MaxDeltas: maxDeltas})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.synced = true
	s.mu.Unlock()
	return s
}

func pod(ns, name string) (proto.LiveKey, json.RawMessage) {
	return proto.LiveKey{Kind: "pods", Namespace: ns, Name: name},
		json.RawMessage(`{"kind":"Pod","metadata":{"namespace":"` + ns + `","name":"` + name + `"}}`)
}

func upsert(s *Source, ns, name string) {
	k, raw := pod(ns, name)
	s.apply(k, raw, false)
}

// follow runs Stream from since for a viewer allowed what may allows,
// and returns its events.
func follow(t *testing.T, s *Source, since proto.LiveCursor, may Access) (<-chan proto.LiveEvent, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	events := make(chan proto.LiveEvent, 1024)
	var wg sync.WaitGroup
	wg.Go(func() {
		err := s.Stream(ctx, pw, nil, since, may)
		pw.CloseWithError(err)
	})
	wg.Go(func() {
		defer close(events)
		if err := Decode(pr, func(e proto.LiveEvent) error { events <- e; return nil }); err != nil && ctx.Err() == nil {
			t.Errorf("stream: %v", err)
		}
	})
	stop := func() { cancel(); pr.Close(); wg.Wait() }
	t.Cleanup(stop)
	return events, stop
}

// until applies events to v until it holds want objects after a synced
// or change event.
func until(t *testing.T, v *View, events <-chan proto.LiveEvent, what string, done func(*View) bool) {
	t.Helper()
	for !(v.Synced && v.next == nil && done(v)) {
		e := testkit.Recv(t, events, what)
		if e.Type == "" {
			t.Fatalf("stream ended while waiting for %s", what)
		}
		if err := v.Apply(e); err != nil {
			t.Fatal(err)
		}
	}
}

func namespaces(allowed ...string) Access {
	return func(_ context.Context, k Kind, ns string) (bool, error) {
		for _, a := range allowed {
			if a == ns {
				return true, nil
			}
		}
		return false, nil
	}
}

func keys(v *View) map[string]bool {
	out := make(map[string]bool)
	for k := range v.Objects {
		out[k.String()] = true
	}
	return out
}

func equalKeys(got map[string]bool, want ...string) bool {
	if len(got) != len(want) {
		return false
	}
	for _, w := range want {
		if !got[w] {
			return false
		}
	}
	return true
}

func TestStreamFiltersSnapshotAndChanges(t *testing.T) {
	s := newTestSource(t, 0)
	upsert(s, "a", "p1")
	upsert(s, "b", "p2")
	events, _ := follow(t, s, proto.LiveCursor{}, namespaces("a"))
	var v View
	until(t, &v, events, "snapshot with a/p1", func(v *View) bool { return equalKeys(keys(v), "pods/a/p1") })

	upsert(s, "a", "p3")
	upsert(s, "b", "p4")
	k1, _ := pod("a", "p1")
	s.apply(k1, nil, true)
	until(t, &v, events, "a/p3 added and a/p1 deleted", func(v *View) bool { return equalKeys(keys(v), "pods/a/p3") })
	if v.Cursor.Rev != s.rev {
		t.Errorf("cursor %d, source at %d: the filtered tail must still move the cursor", v.Cursor.Rev, s.rev)
	}
}

func TestStreamResumes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		max      int
		changes  int
		snapshot bool
	}{
		{"changes held", 100, 5, false},
		{"changes dropped", 2, 10, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestSource(t, tc.max)
			upsert(s, "a", "p0")
			events, stop := follow(t, s, proto.LiveCursor{}, namespaces("a"))
			var v View
			until(t, &v, events, "first snapshot", func(v *View) bool { return len(v.Objects) == 1 })
			stop()
			for i := range tc.changes {
				upsert(s, "a", "q"+string(rune('a'+i)))
			}
			events, _ = follow(t, s, v.Cursor, namespaces("a"))
			first := testkit.Recv(t, events, "first event after resuming")
			if got := first.Type == proto.LiveSnapshot; got != tc.snapshot {
				t.Fatalf("first event after resuming is %s, want snapshot %v", first.Type, tc.snapshot)
			}
			if err := v.Apply(first); err != nil {
				t.Fatal(err)
			}
			until(t, &v, events, "every change", func(v *View) bool { return len(v.Objects) == 1+tc.changes })
		})
	}
}

func TestStreamResnapshotsWhenAccessChanges(t *testing.T) {
	s := newTestSource(t, 0)
	upsert(s, "a", "p1")
	upsert(s, "b", "p2")
	var allowB atomic.Bool
	allowB.Store(true)
	may := func(_ context.Context, _ Kind, ns string) (bool, error) {
		return ns == "a" || ns == "b" && allowB.Load(), nil
	}
	events, _ := follow(t, s, proto.LiveCursor{}, may)
	var v View
	until(t, &v, events, "both pods", func(v *View) bool { return len(v.Objects) == 2 })
	allowB.Store(false)
	s.RBACChanged()
	until(t, &v, events, "b/p2 gone", func(v *View) bool { return equalKeys(keys(v), "pods/a/p1") })
}

// The apiserver's authorizer follows RBAC a moment behind the agent's
// informers: a review asked at once may still allow. The view is right
// rbacSettle later anyway.
func TestStreamSettlesAfterRBACChange(t *testing.T) {
	var allowB atomic.Bool
	allowB.Store(true)
	reviews := &fakeReviews{allow: func(s authorizationv1.SubjectAccessReviewSpec) bool {
		return s.ResourceAttributes.Namespace == "a" || allowB.Load()
	}}
	s, err := New(Config{Client: dynamicfake.NewSimpleDynamicClient(runtime.NewScheme()), Reviews: reviews, ReviewTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.synced = true
	s.mu.Unlock()
	upsert(s, "a", "p1")
	upsert(s, "b", "p2")
	may := func(ctx context.Context, k Kind, ns string) (bool, error) {
		return s.Allowed(ctx, Identity{User: "u"}, "list", k.GVR.Group, k.GVR.Resource, ns)
	}
	events, _ := follow(t, s, proto.LiveCursor{}, may)
	var v View
	until(t, &v, events, "both pods", func(v *View) bool { return len(v.Objects) == 2 })
	asked := reviews.n.Load()
	s.RBACChanged() // seen before the authorizer has it
	testkit.WaitFor(t, "the reviews asked again", func() bool { return reviews.n.Load() > asked })
	allowB.Store(false)
	start := time.Now()
	until(t, &v, events, "b/p2 gone", func(v *View) bool { return equalKeys(keys(v), "pods/a/p1") })
	if took := time.Since(start); took > 3*rbacSettle {
		t.Errorf("view right %v after the authorizer changed, want about %v", took, rbacSettle)
	}
}

func TestStreamEndsWithContext(t *testing.T) {
	s := newTestSource(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Stream(ctx, io.Discard, nil, proto.LiveCursor{}, namespaces("a")) }()
	cancel()
	if err := testkit.Recv(t, done, "stream end"); err != context.Canceled {
		t.Fatalf("Stream returned %v, want context.Canceled", err)
	}
}

func TestViewRefusesGapsAndRepeats(t *testing.T) {
	obj := json.RawMessage(`{}`)
	for _, tc := range []struct {
		name   string
		events []proto.LiveEvent
	}{
		{"repeat", []proto.LiveEvent{
			{Type: proto.LiveSnapshot, Epoch: "e", Rev: 1}, {Type: proto.LiveSynced, Epoch: "e", Rev: 1},
			{Type: proto.LiveUpsert, Epoch: "e", Rev: 1, Kind: "pods", Name: "x", Object: obj}}},
		{"twice in snapshot", []proto.LiveEvent{
			{Type: proto.LiveSnapshot, Epoch: "e", Rev: 1},
			{Type: proto.LiveUpsert, Epoch: "e", Rev: 1, Kind: "pods", Name: "x", Object: obj},
			{Type: proto.LiveUpsert, Epoch: "e", Rev: 1, Kind: "pods", Name: "x", Object: obj}}},
		{"other epoch", []proto.LiveEvent{
			{Type: proto.LiveSnapshot, Epoch: "e", Rev: 1}, {Type: proto.LiveSynced, Epoch: "e", Rev: 1},
			{Type: proto.LiveUpsert, Epoch: "f", Rev: 2, Kind: "pods", Name: "x", Object: obj}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v View
			var err error
			for _, e := range tc.events {
				if err = v.Apply(e); err != nil {
					break
				}
			}
			if err == nil {
				t.Fatal("applied without error")
			}
		})
	}
}

func TestReviewerCaches(t *testing.T) {
	f := &fakeReviews{allow: func(s authorizationv1.SubjectAccessReviewSpec) bool {
		return s.ResourceAttributes.Namespace == "a"
	}}
	now := time.Unix(0, 0)
	r := newReviewer(f, time.Second, func() time.Time { return now })
	ctx := context.Background()
	id := Identity{User: "alice", Groups: []string{"dev", "system:authenticated"}}
	ask := func(ns string, want bool, reviews int64) {
		t.Helper()
		ok, err := r.allowed(ctx, id, "list", "", "pods", ns)
		if err != nil || ok != want {
			t.Fatalf("allowed in %q = %v, %v; want %v", ns, ok, err, want)
		}
		if got := f.n.Load(); got != reviews {
			t.Fatalf("%d reviews, want %d", got, reviews)
		}
	}
	ask("a", true, 1)
	ask("a", true, 1) // cached
	ask("b", false, 2)
	r.invalidate()
	ask("a", true, 3)
	now = now.Add(time.Second)
	ask("a", true, 4) // expired

	// Answers nobody asks for again are dropped once there are many.
	for i := range pruneAt {
		if _, err := r.allowed(ctx, id, "list", "", "pods", fmt.Sprintf("ns%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	now = now.Add(time.Second)
	if _, err := r.allowed(ctx, id, "list", "", "pods", "fresh"); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	n := len(r.answers)
	r.mu.Unlock()
	if n != 1 {
		t.Errorf("%d answers kept after their expiry, want 1 (the fresh one)", n)
	}
}

func TestRunFollowsObjectsAndRBAC(t *testing.T) {
	scheme := runtime.NewScheme()
	gvrs := map[schema.GroupVersionResource]string{}
	for _, k := range knownKinds {
		gvrs[k.GVR] = listKind(k.GVR.Resource)
	}
	for _, g := range rbacKinds {
		gvrs[g] = listKind(g.Resource)
	}
	p := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"namespace": "a", "name": "p1", "managedFields": []any{map[string]any{"manager": "x"}}}}}
	dc := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme, gvrs, p)
	reviews := &fakeReviews{}
	kinds, err := ParseKinds([]string{"pods"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Kinds: kinds, Client: dc, Reviews: reviews})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	t.Cleanup(s.Start(context.Background()))
	testkit.WaitFor(t, "sync", s.Synced)

	events, _ := follow(t, s, proto.LiveCursor{}, namespaces("a"))
	var v View
	until(t, &v, events, "p1", func(v *View) bool { return len(v.Objects) == 1 })
	for _, raw := range v.Objects {
		var u unstructured.Unstructured
		if err := json.Unmarshal(raw, &u.Object); err != nil {
			t.Fatal(err)
		}
		if u.GetManagedFields() != nil {
			t.Errorf("managedFields kept: %s", raw)
		}
	}
	pods := dc.Resource(schema.GroupVersionResource{Version: "v1", Resource: "pods"})
	p2 := p.DeepCopy()
	p2.SetName("p2")
	if _, err := pods.Namespace("a").Create(ctx, p2, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	until(t, &v, events, "p2", func(v *View) bool { return len(v.Objects) == 2 })

	if _, err := s.Allowed(ctx, Identity{User: "u"}, "list", "", "pods", "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Allowed(ctx, Identity{User: "u"}, "list", "", "pods", "a"); err != nil {
		t.Fatal(err)
	}
	if n := reviews.n.Load(); n != 1 {
		t.Fatalf("%d reviews before an RBAC change, want 1", n)
	}
	rb := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
		"metadata": map[string]any{"namespace": "a", "name": "rb"}}}
	if _, err := dc.Resource(rbacKinds[1]).Namespace("a").Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the review cache dropped on an RBAC change", func() bool {
		if _, err := s.Allowed(ctx, Identity{User: "u"}, "list", "", "pods", "a"); err != nil {
			t.Fatal(err)
		}
		return reviews.n.Load() > 1
	})
}

func listKind(resource string) string {
	for _, k := range []struct{ r, k string }{
		{"namespaces", "NamespaceList"}, {"nodes", "NodeList"}, {"pods", "PodList"},
	} {
		if k.r == resource {
			return k.k
		}
	}
	return resource + "List"
}

func TestParseKinds(t *testing.T) {
	for _, tc := range []struct {
		in      []string
		want    []string
		wantErr bool
	}{
		{nil, DefaultKinds, false},
		{[]string{"pods", "Deployments", "pods.core", "secrets"}, []string{"pods", "deployments.apps", "secrets"}, false},
		{[]string{"widgets"}, nil, true},
	} {
		got, err := ParseKinds(tc.in)
		if (err != nil) != tc.wantErr {
			t.Fatalf("ParseKinds(%v) error %v", tc.in, err)
		}
		var names []string
		for _, k := range got {
			names = append(names, k.Name)
		}
		if !tc.wantErr && !slices.Equal(names, tc.want) {
			t.Errorf("ParseKinds(%v) = %v, want %v", tc.in, names, tc.want)
		}
	}
	for _, k := range DefaultKinds {
		if k == "secrets" {
			t.Fatal("secrets among the default kinds")
		}
	}
}

func TestCollectors(t *testing.T) {
	s := newTestSource(t, 0)
	upsert(s, "a", "p1")
	upsert(s, "a", "p2")
	reg := prometheus.NewRegistry()
	reg.MustRegister(s.Collectors("prod")...)
	events, _ := follow(t, s, proto.LiveCursor{}, func(ctx context.Context, k Kind, ns string) (bool, error) {
		return s.Allowed(ctx, Identity{User: "u"}, "list", k.GVR.Group, k.GVR.Resource, ns)
	})
	var v View
	until(t, &v, events, "both pods", func(v *View) bool { return len(v.Objects) == 2 })
	want := `
# HELP clustral_live_changes_total Changes the live view has recorded (its revision).
# TYPE clustral_live_changes_total counter
clustral_live_changes_total{cluster="prod"} 2
# HELP clustral_live_objects Objects the live view holds.
# TYPE clustral_live_objects gauge
clustral_live_objects{cluster="prod"} 2
# HELP clustral_live_reviews_total SubjectAccessReviews the live view asked of the apiserver (the rest came from its cache).
# TYPE clustral_live_reviews_total counter
clustral_live_reviews_total{cluster="prod"} 1
# HELP clustral_live_synced 1 once every informer of the live view has listed, else 0.
# TYPE clustral_live_synced gauge
clustral_live_synced{cluster="prod"} 1
# HELP clustral_live_viewers Open live view streams.
# TYPE clustral_live_viewers gauge
clustral_live_viewers{cluster="prod"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
