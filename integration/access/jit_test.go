package access

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// requestAccess asks, as u through the CLI, for role on the cluster for d.
func requestAccess(u *harness.TestUser, role, d, reason string) proto.AccessRequest {
	u.T().Helper()
	var ar proto.AccessRequest
	out := u.MustRun("access", "request", "--cluster", "kind", "--role", role, "--for", d, "--reason", reason, "-o", "json")
	if err := json.Unmarshal([]byte(out), &ar); err != nil {
		u.T().Fatalf("access request output %q: %v", out, err)
	}
	if ar.State != proto.RequestPending {
		u.T().Fatalf("new request is %s, want pending", ar.State)
	}
	return ar
}

// decide runs `clustral access <action> id` as u and returns the request.
func decide(u *harness.TestUser, action, id string, args ...string) proto.AccessRequest {
	u.T().Helper()
	var ar proto.AccessRequest
	out := u.MustRun(append([]string{"access", action, id, "-o", "json"}, args...)...)
	if err := json.Unmarshal([]byte(out), &ar); err != nil {
		u.T().Fatalf("access %s output %q: %v", action, out, err)
	}
	return ar
}

// requestState returns the state of request id as u sees it in
// `clustral access list`.
func requestState(u *harness.TestUser, id string) (string, error) {
	out, _, err := u.Run(context.Background(), "access", "list", "-o", "json")
	if err != nil {
		return "", err
	}
	var ars []proto.AccessRequest
	if err := json.Unmarshal([]byte(out), &ars); err != nil {
		return "", err
	}
	for _, ar := range ars {
		if ar.ID == id {
			return ar.State, nil
		}
	}
	return "", fmt.Errorf("request %s not in clustral access list", id)
}

// reachable returns the clusters `clustral status -o json` lists for u.
func reachable(u *harness.TestUser) []string {
	u.T().Helper()
	var st struct {
		Connected bool                     `json:"connected"`
		Clusters  []proto.ReachableCluster `json:"clusters"`
	}
	out := u.MustRun("status", "-o", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		u.T().Fatalf("status output %q: %v", out, err)
	}
	var names []string
	for _, c := range st.Clusters {
		names = append(names, c.Name)
	}
	return names
}

// restClient returns a REST client for u's clustral-kind context, read from
// the kubeconfig now: it keeps working after the context is removed from
// the file.
func restClient(u *harness.TestUser) rest.Interface {
	u.T().Helper()
	cfg := u.RESTConfig()
	cfg.Timeout = 3 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		u.T().Fatal(err)
	}
	return cs.CoreV1().RESTClient()
}

// listConfigMaps lists the configmaps in ns once. client-go would retry a
// GET whose connection was closed after a second; here a closed
// connection is an answer.
func listConfigMaps(ctx context.Context, c rest.Interface, ns string) error {
	return c.Get().Namespace(ns).Resource("configmaps").MaxRetries(0).Do(ctx).Error()
}

// probe is one request of untilDenied.
type probe struct {
	start, end time.Time
	err        error
}

// untilDenied lists configmaps in ns with c until a request fails, and
// returns that request and the last one that succeeded before it.
func untilDenied(t *testing.T, c rest.Interface, ns string, timeout time.Duration) (denied, lastAllowed probe) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		p := probe{start: time.Now()}
		p.err = listConfigMaps(context.Background(), c, ns)
		p.end = time.Now()
		if p.err != nil {
			return p, lastAllowed
		}
		lastAllowed = p
	}
	t.Fatalf("still allowed %v later", timeout)
	return probe{}, probe{}
}

// newJITMesh starts a mesh with an agent and returns it, alice (logged
// in and up; she asks for access) and bob (logged in; he decides).
func newJITMesh(t *testing.T) (*harness.Mesh, *harness.TestUser, *harness.TestUser) {
	t.Helper()
	m := suite.NewMeshWithAgent(t)
	a, b := suite.NewUser(t, alice), suite.NewUser(t, bob)
	a.MustLogin()
	b.MustLogin()
	a.MustUp()
	return m, a, b
}

// TestJITLifecycle: alice, with no role, asks for editor for a short
// while; bob, a member of the role's approver group, approves; the
// cluster appears in alice's running tunnel and kubectl works. The grant
// then ends on the agent's own clock: with the coordinator stopped before
// the end, so that no map change can arrive, the agent still refuses
// alice from the moment the grant expires, with ACCESS_EXPIRED. Back up,
// the coordinator records the request as expired.
func TestJITLifecycle(t *testing.T) {
	m, a, b := newJITMesh(t)
	if got := reachable(a); len(got) != 0 {
		t.Fatalf("alice reaches %v before any grant", got)
	}
	ns := suite.NewNamespace(t)

	const grant = 20 * time.Second
	ar := requestAccess(a, "editor", grant.String(), "INC-1234: restart the ingress")
	if pending, err := requestState(b, ar.ID); err != nil || pending != proto.RequestPending {
		t.Fatalf("bob's list: request %s is %q (%v), want pending", ar.ID, pending, err)
	}
	ar = decide(b, "approve", ar.ID, "--reason", "on call")
	if ar.State != proto.RequestApproved || ar.GrantExpires == nil || ar.DecidedBy != bob.Email {
		t.Fatalf("approved request = %+v", ar)
	}
	expires := *ar.GrantExpires
	t.Logf("grant ends at %s", expires.Format(time.RFC3339Nano))

	// The context appears in the running tunnel through a map delta.
	harness.MustEventually(t, 10*time.Second, func(context.Context) error {
		_, err := a.RunKubectl("get", "configmaps", "-n", ns)
		return err
	})
	if got := reachable(a); !slices.Equal(got, []string{"kind"}) {
		t.Errorf("alice reaches %v with the grant, want [kind]", got)
	}
	if _, err := a.RunKubectl("create", "configmap", "from-alice", "-n", ns); err != nil {
		t.Errorf("alice (editor) create configmap: %v", err)
	}

	// Stop the coordinator well before the end: from here on neither the
	// agent nor alice's device hears of any change.
	stopAt := expires.Add(-6 * time.Second)
	if time.Now().After(stopAt) {
		t.Fatalf("the grant was usable only %v before its end", time.Until(expires))
	}
	time.Sleep(time.Until(stopAt))
	m.Coord.Stop()
	if _, err := a.RunKubectl("get", "configmaps", "-n", ns); err != nil {
		t.Fatalf("with the coordinator down, before the end of the grant: %v", err)
	}

	c := restClient(a)
	denied, allowed := untilDenied(t, c, ns, time.Until(expires)+10*time.Second)
	t.Logf("last allowed request ended %v after the grant's end; the first refused one started %v after it and ended %v after it: %v",
		allowed.end.Sub(expires), denied.start.Sub(expires), denied.end.Sub(expires), denied.err)
	// One clock on one machine: the agent decided between the start and
	// the end of each request.
	if allowed.start.After(expires) {
		t.Errorf("a request started %v after the grant's end was allowed", allowed.start.Sub(expires))
	}
	if denied.end.Before(expires) {
		t.Errorf("refused %v before the grant's end", expires.Sub(denied.end))
	}
	if late := denied.start.Sub(expires); late > time.Second {
		t.Errorf("refused %v after the grant's end, want within 1s", late)
	}
	r, err := a.KubectlRefused("get", "configmaps", "-n", ns)
	if err != nil {
		t.Fatal(err)
	}
	if r.Code != proto.CodeAccessExpired {
		t.Errorf("after the end, kubectl got %q, want %s: %s", r.Code, proto.CodeAccessExpired, r.Message)
	}
	if want := fmt.Sprintf("The access of %s to cluster 'kind' (role 'editor') expired at", alice.Email); !strings.Contains(r.Message, want) {
		t.Errorf("after the end, kubectl said %q, want %q", r.Message, want)
	}

	// The coordinator, back, expires the request and takes the cluster
	// out of alice's map.
	if err := m.Coord.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	harness.MustEventually(t, 10*time.Second, func(context.Context) error {
		st, err := requestState(a, ar.ID)
		if err == nil && st != proto.RequestExpired {
			err = fmt.Errorf("request %s is %s, want expired", ar.ID, st)
		}
		return err
	})
	harness.MustEventually(t, 15*time.Second, func(context.Context) error {
		if got := reachable(a); len(got) != 0 {
			return fmt.Errorf("alice still reaches %v", got)
		}
		return nil
	})
}

// TestJITDeny: a denied request gives nothing; denying needs a reason.
func TestJITDeny(t *testing.T) {
	_, a, b := newJITMesh(t)
	ar := requestAccess(a, "editor", "1h", "INC-1235")

	_, stderr, code := b.RunCode("access", "deny", ar.ID)
	if code == 0 || !strings.Contains(stderr, "a reason is required to deny") {
		t.Errorf("deny without a reason: exit %d, stderr %q", code, stderr)
	}
	ar = decide(b, "deny", ar.ID, "--reason", "use staging")
	if ar.State != proto.RequestDenied || ar.DecisionReason != "use staging" {
		t.Fatalf("denied request = %+v", ar)
	}
	if st, err := requestState(a, ar.ID); err != nil || st != proto.RequestDenied {
		t.Errorf("alice's list: request is %q (%v), want denied", st, err)
	}
	// Nothing arrives: no agent in the tunnel, and kubectl hears that
	// alice has no role there.
	time.Sleep(time.Second) // a map delta, were there one, takes ~10ms
	if got := reachable(a); len(got) != 0 {
		t.Errorf("alice reaches %v after the denial", got)
	}
	r, err := a.KubectlRefused("get", "configmaps", "-n", "default")
	if err != nil {
		t.Fatalf("kubectl after the denial: %v", err)
	}
	if want := alice.Email + " has no role on cluster 'kind'"; r.Code != proto.CodeNoRoleAssignment || !strings.Contains(r.Message, want) {
		t.Errorf("kubectl after the denial: %s %q, want %s and %q", r.Code, r.Message, proto.CodeNoRoleAssignment, want)
	}
	// A decided request cannot be approved after all.
	_, stderr, code = b.RunCode("access", "approve", ar.ID)
	if code == 0 || !strings.Contains(stderr, "is denied, not pending") {
		t.Errorf("approve after deny: exit %d, stderr %q", code, stderr)
	}
}

// TestJITRevoke: revoking an active grant refuses the next request
// within 1s of the revoke call returning.
func TestJITRevoke(t *testing.T) {
	m := suite.NewMeshWithAgent(t)
	a := suite.NewUser(t, alice)
	a.MustLogin()
	ar := requestAccess(a, "editor", "1h", "INC-1236")
	decide(m.Admin, "approve", ar.ID)
	a.MustUp()
	ns := suite.NewNamespace(t)
	c := restClient(a)
	harness.MustEventually(t, 10*time.Second, func(ctx context.Context) error {
		return listConfigMaps(ctx, c, ns)
	})

	m.Admin.MustAPI("POST", "/api/v1/access-requests/"+ar.ID+"/revoke", proto.AccessDecision{Reason: "done"}, nil)
	revoked := time.Now()
	denied, _ := untilDenied(t, c, ns, 10*time.Second)
	took := max(0, denied.end.Sub(revoked))
	t.Logf("first refused request ended %v after the revoke call returned: %v", took, denied.err)
	if took > time.Second {
		t.Errorf("refused %v after the revoke, want within 1s", took)
	}
	if st, err := requestState(a, ar.ID); err != nil || st != proto.RequestRevoked {
		t.Errorf("alice's list: request is %q (%v), want revoked", st, err)
	}
	harness.MustEventually(t, 5*time.Second, func(context.Context) error {
		if _, err := a.RunKubectl("get", "configmaps", "-n", ns); err == nil {
			return errors.New("kubectl still works after the revoke")
		}
		return nil
	})
}

// TestSelfApproval: nobody decides their own request, administrators
// included, and users outside the role's approver groups decide none;
// the CLI says so and exits 4.
func TestSelfApproval(t *testing.T) {
	m := suite.NewMesh(t)
	a, c := suite.NewUser(t, alice), suite.NewUser(t, carol)
	a.MustLogin()
	c.MustLogin()
	mine := requestAccess(a, "editor", "1h", "INC-1237")
	adminOwn := requestAccess(m.Admin, "editor", "1h", "INC-1238")

	tests := []struct {
		who    *harness.TestUser
		action string
		id     string
		want   string
	}{
		{a, "approve", mine.ID, "nobody approves or denies their own request"},
		{a, "deny", mine.ID, "nobody approves or denies their own request"},
		{m.Admin, "approve", adminOwn.ID, "nobody approves or denies their own request"},
		{c, "approve", mine.ID, carol.Email + " may not decide requests for role editor"},
	}
	for _, tt := range tests {
		_, stderr, code := tt.who.RunCode("access", tt.action, tt.id, "--reason", "why not")
		if code != 4 {
			t.Errorf("%s: access %s of %s: exit %d, want 4; stderr %q", tt.who.Email, tt.action, tt.id, code, stderr)
		}
		if !strings.Contains(stderr, tt.want) {
			t.Errorf("%s: access %s of %s: stderr %q, want %q", tt.who.Email, tt.action, tt.id, stderr, tt.want)
		}
	}
	for _, id := range []string{mine.ID, adminOwn.ID} {
		if st, err := requestState(m.Admin, id); err != nil || st != proto.RequestPending {
			t.Errorf("request %s is %q (%v) after refused decisions, want pending", id, st, err)
		}
	}
}
