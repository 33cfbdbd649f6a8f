package agent

import (
	"context"
	"net/http"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"

	"github.com/clustral/clustral/agent/live"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// rbacReviews plays the apiserver's RBAC: it allows what allow says.
type rbacReviews struct {
	allow func(user string, groups []string, a *authorizationv1.ResourceAttributes) bool
}

func (r rbacReviews) Create(_ context.Context, sar *authorizationv1.SubjectAccessReview, _ metav1.CreateOptions) (*authorizationv1.SubjectAccessReview, error) {
	out := sar.DeepCopy()
	out.Status.Allowed = r.allow(sar.Spec.User, sar.Spec.Groups, sar.Spec.ResourceAttributes)
	return out, nil
}

func livePod(ns, name string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"namespace": ns, "name": name}}}
}

// fakeLiveSource runs a live view of pods over a fake dynamic client
// holding objs, judged by reviews.
func fakeLiveSource(t *testing.T, reviews live.Reviews, objs ...runtime.Object) *live.Source {
	t.Helper()
	dc := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		{Version: "v1", Resource: "pods"}:                                                    "PodList",
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"}:               "RoleList",
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"}:        "RoleBindingList",
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"}:        "ClusterRoleList",
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"}: "ClusterRoleBindingList",
	}, objs...)
	kinds, err := live.ParseKinds([]string{"pods"})
	if err != nil {
		t.Fatal(err)
	}
	src, err := live.New(live.Config{Kinds: kinds, Client: dc, Reviews: reviews})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Start(context.Background()))
	testkit.WaitFor(t, "live source synced", src.Synced)
	return src
}

// openLive opens the live stream and returns its lines.
func openLive(t *testing.T, h *harness) (*http.Response, <-chan proto.LiveEvent) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, h.url(proto.LiveStreamPath), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("live stream: status %d", resp.StatusCode)
	}
	events := make(chan proto.LiveEvent, 64)
	go func() {
		defer close(events)
		live.Decode(resp.Body, func(e proto.LiveEvent) error { events <- e; return nil })
	}()
	return resp, events
}

func syncedView(t *testing.T, events <-chan proto.LiveEvent) *live.View {
	t.Helper()
	var v live.View
	for !v.Synced {
		e := testkit.Recv(t, events, "live snapshot")
		if e.Type == "" {
			t.Fatal("live stream ended before its snapshot")
		}
		if err := v.Apply(e); err != nil {
			t.Fatal(err)
		}
	}
	return &v
}

// A viewer sees an object only where both the clustral restrictions of
// their grants and the apiserver's RBAC for the impersonated identity let
// them list and watch it.
func TestLiveViewFiltersByRestrictionsAndRBAC(t *testing.T) {
	reviews := rbacReviews{allow: func(user string, groups []string, a *authorizationv1.ResourceAttributes) bool {
		// RBAC lets alice's groups read everywhere but in "secret-ns".
		return user == "alice@example.com" && a.Namespace != "secret-ns" && (a.Verb == "list" || a.Verb == "watch")
	}}
	src := fakeLiveSource(t, reviews,
		livePod("dev", "a"), livePod("dev", "b"), livePod("prod", "c"), livePod("secret-ns", "d"))
	h := newHarness(t, http.NotFoundHandler(), func(c *ProxyConfig) { c.Live = src })
	dev := grant("dev", "developers")
	dev.Restrictions = &proto.Restrictions{Namespaces: []string{"dev", "secret-ns"}}
	h.peers.set(loopback, device(1, "alice@example.com", dev))

	_, events := openLive(t, h)
	v := syncedView(t, events)
	want := map[string]bool{"pods/dev/a": true, "pods/dev/b": true}
	if len(v.Objects) != len(want) {
		t.Fatalf("view holds %v, want %v", v.Objects, want)
	}
	for k := range v.Objects {
		if !want[k.String()] {
			t.Errorf("view holds %s, which alice may not list", k)
		}
	}
}

// Revoking the viewer ends the stream at once, as it ends a watch.
func TestLiveViewEndsOnRevocation(t *testing.T) {
	src := fakeLiveSource(t, rbacReviews{allow: func(string, []string, *authorizationv1.ResourceAttributes) bool { return true }},
		livePod("dev", "a"))
	h := newHarness(t, http.NotFoundHandler(), func(c *ProxyConfig) { c.Live = src })
	_, events := openLive(t, h)
	syncedView(t, events)
	h.peers.remove(loopback)
	if n := h.proxy.Reevaluate(); n == 0 {
		t.Fatal("Reevaluate closed nothing")
	}
	// Until the stream ends, the viewer may get pings, and, if the
	// stream rechecked its access first, a new snapshot without the
	// objects it lost; no object reaches it.
	for e := range events {
		switch e.Type {
		case proto.LivePing, proto.LiveSnapshot, proto.LiveSynced:
		default:
			t.Errorf("event %s %s/%s after revocation", e.Type, e.Namespace, e.Name)
		}
	}
}

func TestLiveViewOff(t *testing.T) {
	h := newHarness(t, http.NotFoundHandler())
	resp, body := h.get(proto.LiveStreamPath)
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get(proto.HeaderErrorCode) != string(proto.CodeNotFound) {
		t.Fatalf("status %d code %q, want 404 NOT_FOUND: %s", resp.StatusCode, resp.Header.Get(proto.HeaderErrorCode), body)
	}
}
