package access

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// binary returns the clustral binary under test, built once per package.
func binary(t testing.TB) string {
	t.Helper()
	if clustralBin == "" {
		b, err := harness.ClustralBinary(binDir)
		if err != nil {
			t.Fatal(err)
		}
		clustralBin = b
	}
	return clustralBin
}

// startCoordinator starts a coordinator with a fresh data directory on
// coordPort (Dex's redirect URI names it), with admin as administrator.
func startCoordinator(t *testing.T) *harness.Coordinator {
	t.Helper()
	c, err := harness.StartCoordinator(context.Background(), binary(t), t.TempDir(), harness.CoordinatorOptions{
		Port: coordPort, Dex: env.Dex, ClientID: "clustral", ClientSecret: oidcSecret, Admins: []string{admin.Email},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			t.Logf("coordinator log:\n%s", c.Proc.Tail(40))
		}
	})
	return c
}

// startAgent runs an agent for the cluster of joinToken with the
// least-privilege identity against the test apiserver.
func startAgent(t *testing.T, joinToken string) *harness.Agent {
	t.Helper()
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	if err := env.APIServer.WriteKubeconfig(kc, "agent", harness.AgentIdentity.Token); err != nil {
		t.Fatal(err)
	}
	a, err := harness.StartAgent(context.Background(), binary(t), dir, coordURL(), joinToken, kc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Proc.Stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", a.Proc.Tail(60))
		}
	})
	return a
}

// user is a harness.User bound to a test.
type user struct {
	*harness.User
	t *testing.T
}

func newUser(t *testing.T, d harness.DexUser) *user {
	t.Helper()
	u := &user{User: harness.NewUser(binary(t), t.TempDir(), d), t: t}
	t.Cleanup(func() {
		// Whatever happens, take the tunnel down.
		u.User.Down(context.Background())
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(u.Dir, "config", "profiles", "default", "up.log")); err == nil {
				t.Logf("%s up.log:\n%s", u.Email, lastLines(string(b), 40))
			}
		}
	})
	return u
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// must runs `clustral args...` as u and fails the test if it fails.
func (u *user) must(args ...string) string {
	u.t.Helper()
	out, _, err := u.Run(context.Background(), args...)
	if err != nil {
		u.t.Fatal(err)
	}
	return out
}

// cli runs `clustral args...` as u and returns its output and exit code.
func (u *user) cli(args ...string) (stdout, stderr string, code int) {
	u.t.Helper()
	stdout, stderr, err := u.Run(context.Background(), args...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout, stderr, 0
	case errors.As(err, &ee):
		return stdout, stderr, ee.ExitCode()
	}
	u.t.Fatal(err)
	return "", "", -1
}

func (u *user) login() {
	u.t.Helper()
	if err := u.LoginWithToken(context.Background(), env.Dex, "clustral", oidcSecret, coordURL()); err != nil {
		u.t.Fatal(err)
	}
}

func (u *user) up() {
	u.t.Helper()
	if err := u.Up(context.Background()); err != nil {
		u.t.Fatal(err)
	}
}

// kubectl runs `kubectl --context clustral-kind args...` as u.
func (u *user) kubectl(args ...string) (harness.KubectlResult, error) {
	k := u.Kubectl()
	k.Context = "clustral-kind"
	return k.Run(context.Background(), args...)
}

func (u *user) api(method, path string, body, out any) {
	u.t.Helper()
	if err := u.API(context.Background(), coordURL(), method, path, body, out); err != nil {
		u.t.Fatal(err)
	}
}

// errorCodeLog finds the X-Clustral-Error-Code response header in the
// request log kubectl writes at -v=8 and above.
var errorCodeLog = regexp.MustCompile(`(?i)X-Clustral-Error-Code:?\s*"?\[?([A-Z_]+)`)

// refusal is what kubectl showed of a refused request.
type refusal struct {
	code    proto.ErrorCode // the last X-Clustral-Error-Code kubectl logged
	message string          // kubectl's error lines, without the request log
}

// kubectlRefused runs kubectl as u at -v=8 and returns the clustral error
// code of its last refused request and its error message, or an error if
// kubectl succeeded.
func (u *user) kubectlRefused(args ...string) (refusal, error) {
	res, err := u.kubectl(append([]string{"-v=8"}, args...)...)
	if err == nil {
		return refusal{}, errors.New("kubectl " + strings.Join(args, " ") + " succeeded")
	}
	var ke *harness.KubectlError
	if !errors.As(err, &ke) {
		return refusal{}, err
	}
	var r refusal
	if m := errorCodeLog.FindAllStringSubmatch(res.Stderr, -1); len(m) > 0 {
		r.code = proto.ErrorCode(m[len(m)-1][1])
	}
	var msg []string
	for _, l := range strings.Split(res.Stderr, "\n") {
		if strings.HasPrefix(l, "Error") || strings.HasPrefix(l, "error") {
			msg = append(msg, l)
		}
	}
	r.message = strings.Join(msg, "\n")
	return r, nil
}

// eventually retries f for up to timeout, for state other components pick
// up asynchronously, and fails the test with f's last error.
func eventually(t *testing.T, timeout time.Duration, f func(ctx context.Context) error) {
	t.Helper()
	if err := harness.Eventually(context.Background(), timeout, f); err != nil {
		t.Fatal(err)
	}
}

// createConfigMap creates a configmap as the apiserver's admin.
func createConfigMap(t *testing.T, namespace, name string) {
	t.Helper()
	_, err := env.APIServer.Client().CoreV1().ConfigMaps(namespace).Create(context.Background(),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// newNamespace creates a namespace for one test and deletes it afterwards.
func newNamespace(t *testing.T) string {
	t.Helper()
	c := env.APIServer.Client()
	ns, err := c.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "access-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}

// testMesh is a coordinator with one cluster "kind" and roles viewer
// (group clustral:viewers, bound to view) and editor (clustral:editors,
// bound to edit, approvers: the OIDC group "ops").
type testMesh struct {
	coord     *harness.Coordinator
	admin     *user
	joinToken string
}

func newMesh(t *testing.T) *testMesh {
	t.Helper()
	m := &testMesh{coord: startCoordinator(t), admin: newUser(t, admin)}
	m.admin.login()
	var cl proto.CreateClusterResponse
	m.admin.api("POST", "/api/v1/clusters", proto.CreateClusterRequest{Name: "kind"}, &cl)
	m.joinToken = cl.JoinToken
	m.admin.api("POST", "/api/v1/roles", proto.Role{Name: "viewer", Groups: []string{"clustral:viewers"}}, nil)
	m.admin.api("POST", "/api/v1/roles", proto.Role{Name: "editor", Groups: []string{"clustral:editors"}, ApproverGroups: []string{"ops"}}, nil)
	return m
}

// assign gives who the role on the cluster and returns the assignment.
func (m *testMesh) assign(t *testing.T, who, role string) proto.Assignment {
	t.Helper()
	var a proto.Assignment
	m.admin.api("POST", "/api/v1/assignments", proto.Assignment{User: who, Role: role, Cluster: "kind"}, &a)
	return a
}
