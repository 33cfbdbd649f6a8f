package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustral/clustral/proto"
)

// This file is the common ground of the end-to-end test packages that run
// a whole mesh per test: a coordinator logging users in through Dex, an
// agent in front of the Env's apiserver, and users running clustral and
// kubectl.

const (
	// MeshCluster is the cluster NewMesh registers.
	MeshCluster = "kind"
	// MeshContext is the kubeconfig context `clustral up` writes for
	// MeshCluster; TestUser's kubectl runs use it.
	MeshContext = "clustral-" + MeshCluster

	meshClientID   = "clustral"
	meshOIDCSecret = "coordinator-secret-0123456789"
)

// The Dex users the end-to-end test packages share. Admin administers
// every coordinator a MeshSuite starts; Carol is in no group.
var (
	Admin = DexUser{Email: "admin@example.com", Password: "admin-pw", Groups: []string{"platform"}}
	Alice = DexUser{Email: "alice@example.com", Password: "alice-pw", Groups: []string{"dev"}}
	Bob   = DexUser{Email: "bob@example.com", Password: "bob-pw", Groups: []string{"ops"}}
	Carol = DexUser{Email: "carol@example.com", Password: "carol-pw"}
	Dave  = DexUser{Email: "dave@example.com", Password: "dave-pw", Groups: []string{"dev"}}
)

// The clustral roles a MeshSuite's meshes have unless MeshOptions.Roles
// says otherwise: viewer (the group clustral:viewers, bound to the
// ClusterRole view) and editor (clustral:editors, bound to edit).
var (
	ViewerRole = proto.Role{Name: "viewer", Groups: []string{"clustral:viewers"}}
	EditorRole = proto.Role{Name: "editor", Groups: []string{"clustral:editors"}}
)

// meshGroupRoles binds the groups of ViewerRole and EditorRole to their
// ClusterRoles in every MeshSuite's apiserver.
var meshGroupRoles = map[string]string{"clustral:viewers": "view", "clustral:editors": "edit"}

// MeshOptions configure MeshMain.
type MeshOptions struct {
	// Name names the package's temporary files and the namespaces of
	// NewNamespace.
	Name string
	// Users are Dex's static users; Admin, who administers every
	// coordinator the suite starts, is one whether listed or not.
	Users []DexUser
	// Roles are the clustral roles NewMesh creates; nil means ViewerRole
	// and EditorRole.
	Roles []proto.Role
	// Tracing starts an OTLPReceiver (MeshSuite.Traces) and has the
	// apiserver export its spans to it (APIServerOptions.TracingEndpoint).
	Tracing bool
	// AgentGroups are groups of the agent's apiserver identity
	// (AgentIdentity) besides system:authenticated, e.g.
	// system:monitoring, the group whose trace context the apiserver
	// follows.
	AgentGroups []string
	// GroupRoles binds more groups to ClusterRoles (group → ClusterRole),
	// besides those of ViewerRole and EditorRole.
	GroupRoles map[string]string
}

// MeshSuite is what the tests of one package share: the Env (kube-apiserver
// with the agent identity allowed to impersonate, and Dex), the port every
// coordinator listens on (Dex's redirect URI names it), and the clustral
// binary. MeshMain creates it; tests run one at a time, each starting its
// own coordinator.
type MeshSuite struct {
	Env        *Env
	CoordPort  int
	OIDCSecret string // the coordinator's secret at Dex
	Bin        string // the clustral binary under test
	// Traces receives the apiserver's spans; nil unless
	// MeshOptions.Tracing.
	Traces *OTLPReceiver

	opts MeshOptions
	kwok func() (*KWOK, error)
}

// MeshMain is TestMain for a package of mesh tests: it builds the clustral
// binary (see ClustralBinary), starts an Env with Dex serving Admin and
// o.Users, grants the agent identity impersonation, binds the groups of
// ViewerRole and EditorRole to the ClusterRoles view and edit, hands the
// suite to setup and runs the tests. It returns the exit code for os.Exit:
//
//	var suite *harness.MeshSuite
//
//	func TestMain(m *testing.M) {
//		os.Exit(harness.MeshMain(m, opts, func(s *harness.MeshSuite) { suite = s }))
//	}
func MeshMain(m *testing.M, o MeshOptions, setup func(*MeshSuite)) int {
	if o.Roles == nil {
		o.Roles = []proto.Role{ViewerRole, EditorRole}
	}
	users := o.Users
	if !slices.ContainsFunc(users, func(u DexUser) bool { return u.Email == Admin.Email }) {
		users = append([]DexUser{Admin}, users...)
	}
	port, err := FreePort()
	if err != nil {
		fmt.Fprintf(os.Stderr, "harness: %v\n", err)
		return 1
	}
	dir, bin, err := TempClustral("clustral-" + o.Name + "-bin")
	if err != nil {
		fmt.Fprintf(os.Stderr, "harness: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	s := &MeshSuite{CoordPort: port, OIDCSecret: meshOIDCSecret, Bin: bin, opts: o}
	s.kwok = sync.OnceValues(func() (*KWOK, error) { return s.Env.StartKWOK(context.Background()) })
	opts := Options{
		APIServer: APIServerOptions{Identities: []Identity{{Token: AgentIdentity.Token, User: AgentIdentity.User, Groups: o.AgentGroups}}},
		Dex: &DexOptions{
			Users: users,
			Clients: []DexClient{{
				ID: meshClientID, Secret: s.OIDCSecret,
				RedirectURIs: []string{s.CoordURL() + "/oidc/callback"},
			}},
		},
	}
	if o.Tracing {
		r, err := StartOTLPReceiver()
		if err != nil {
			fmt.Fprintf(os.Stderr, "harness: %v\n", err)
			return 1
		}
		defer r.Close() // after Main has stopped the apiserver
		s.Traces, opts.APIServer.TracingEndpoint = r, r.Addr
	}
	return Main(m, opts, func(e *Env) {
		s.Env = e
		ctx := context.Background()
		c := e.APIServer.Client()
		if err := GrantImpersonation(ctx, c, AgentIdentity.User); err != nil {
			panic(fmt.Sprintf("grant impersonation: %v", err))
		}
		for group, role := range mergeMaps(meshGroupRoles, o.GroupRoles) {
			if err := BindClusterRole(ctx, c, group, role, rbacv1.GroupKind, group); err != nil {
				panic(fmt.Sprintf("bind %s to %s: %v", group, role, err))
			}
		}
		setup(s)
	})
}

// CoordURL is the URL of the coordinators StartCoordinator starts.
func (s *MeshSuite) CoordURL() string { return "http://127.0.0.1:" + strconv.Itoa(s.CoordPort) }

// KWOK starts KWOK for the Env the first time it is called and returns
// it every time; the Env stops it. If KWOK did not start, it fails t with
// the error, every time.
func (s *MeshSuite) KWOK(t testing.TB) *KWOK {
	t.Helper()
	kw, err := s.kwok()
	if err != nil {
		t.Fatal(err)
	}
	return kw
}

// StartCoordinator starts a coordinator with a fresh data directory on
// CoordPort, logging in through Dex, with the suite's admin as
// administrator. t's cleanup stops it and logs its tail if t failed.
func (s *MeshSuite) StartCoordinator(t testing.TB) *Coordinator {
	t.Helper()
	return s.StartCoordinatorWith(t)
}

// StoreEnv names the environment variable that selects the store of the
// coordinators StartCoordinator starts: "etcd" gives each its own etcd
// (one member, stopped by t's cleanup), anything else the default bbolt
// file. CI runs the mesh and access suites both ways.
const StoreEnv = "CLUSTRAL_TEST_STORE"

// StartCoordinatorWith is StartCoordinator with extraArgs added to
// `clustral coordinator`.
func (s *MeshSuite) StartCoordinatorWith(t testing.TB, extraArgs ...string) *Coordinator {
	t.Helper()
	if os.Getenv(StoreEnv) == "etcd" && !slices.Contains(extraArgs, "--store") {
		e, err := StartEtcd(context.Background(), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		extraArgs = append([]string{"--store", "etcd", "--etcd-endpoints", e.URL}, extraArgs...)
	}
	c, err := StartCoordinator(context.Background(), s.Bin, t.TempDir(), CoordinatorOptions{
		Port: s.CoordPort, Dex: s.Env.Dex, ClientID: meshClientID, ClientSecret: s.OIDCSecret, Admins: []string{Admin.Email},
		ExtraArgs: extraArgs,
	})
	if err != nil {
		t.Fatal(err)
	}
	c.StopAtEnd(t, 40)
	return c
}

// StartReplicas starts a three-member etcd cluster and n coordinator
// replicas on it (--store etcd), with extraArgs, sharing the first
// one's audit checkpoint key as a deployment does. t's cleanup stops
// them all, logging the coordinators' tails if t failed.
func (s *MeshSuite) StartReplicas(t testing.TB, n int, extraArgs ...string) *Replicas {
	t.Helper()
	r, err := StartReplicas(context.Background(), s.Bin, t.TempDir(), n, CoordinatorOptions{
		Port: s.CoordPort, Dex: s.Env.Dex, ClientID: meshClientID, ClientSecret: s.OIDCSecret, Admins: []string{Admin.Email},
		ExtraArgs: append([]string{"--public-url", s.CoordURL()}, extraArgs...),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Etcd.Close() })
	for _, c := range r.Coords {
		c.StopAtEnd(t, 40)
	}
	return r
}

// StartAgent runs an agent for the cluster of joinToken, with extraArgs,
// as the least-privilege AgentIdentity against the Env's apiserver. t's
// cleanup stops it and logs its tail if t failed.
func (s *MeshSuite) StartAgent(t testing.TB, joinToken string, extraArgs ...string) *Agent {
	t.Helper()
	return s.StartAgentAt(t, s.CoordURL(), joinToken, extraArgs...)
}

// StartAgentAt is StartAgent with the agent's --coordinator coordURL.
func (s *MeshSuite) StartAgentAt(t testing.TB, coordURL, joinToken string, extraArgs ...string) *Agent {
	t.Helper()
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	if err := s.Env.APIServer.WriteKubeconfig(kc, "agent", AgentIdentity.Token); err != nil {
		t.Fatal(err)
	}
	a, err := StartAgent(context.Background(), s.Bin, dir, coordURL, joinToken, kc, extraArgs...)
	if err != nil {
		t.Fatal(err)
	}
	a.Proc.StopAtEnd(t, 60)
	return a
}

// NewUser prepares d's clustral and kubectl in a directory of t's. t's
// cleanup takes d's tunnel down and logs the tail of its up.log if t
// failed.
func (s *MeshSuite) NewUser(t testing.TB, d DexUser) *TestUser {
	t.Helper()
	u := &TestUser{User: NewUser(s.Bin, t.TempDir(), d), t: t, s: s}
	t.Cleanup(func() {
		// Whatever happens, take the tunnel down.
		u.User.Down(context.Background())
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(u.Dir, "config", "profiles", "default", "up.log")); err == nil {
				t.Logf("%s up.log:\n%s", u.Email, LastLines(string(b), 40))
			}
		}
	})
	return u
}

// NewNamespace creates a namespace for t, deleted by t's cleanup.
func (s *MeshSuite) NewNamespace(t testing.TB) string {
	t.Helper()
	c := s.Env.APIServer.Client()
	ns, err := c.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: s.opts.Name + "-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}

// CreateConfigMap creates an empty configmap as the apiserver's admin.
func (s *MeshSuite) CreateConfigMap(t testing.TB, namespace, name string) {
	t.Helper()
	_, err := s.Env.APIServer.Client().CoreV1().ConfigMaps(namespace).Create(context.Background(),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// Mesh is a coordinator with the cluster MeshCluster and the suite's
// roles, and its administrator, logged in.
type Mesh struct {
	Coord     *Coordinator
	Admin     *TestUser
	JoinToken string // MeshCluster's
}

// NewMesh starts a coordinator for t (StartCoordinator), logs the admin
// in, and registers MeshCluster and the suite's roles. No agent runs yet.
func (s *MeshSuite) NewMesh(t testing.TB) *Mesh {
	t.Helper()
	m := &Mesh{Coord: s.StartCoordinator(t), Admin: s.NewUser(t, Admin)}
	m.Admin.MustLogin()
	var cl proto.CreateClusterResponse
	m.Admin.MustAPI("POST", "/api/v1/clusters", proto.CreateClusterRequest{Name: MeshCluster}, &cl)
	m.JoinToken = cl.JoinToken
	for _, r := range s.opts.Roles {
		m.Admin.MustAPI("POST", "/api/v1/roles", r, nil)
	}
	return m
}

// NewMeshWithAgent is NewMesh with an agent for MeshCluster running
// (StartAgent).
func (s *MeshSuite) NewMeshWithAgent(t testing.TB) *Mesh {
	t.Helper()
	m := s.NewMesh(t)
	s.StartAgent(t, m.JoinToken)
	return m
}

// Assign gives who (a user's email or an OIDC group) role on MeshCluster
// and returns the assignment.
func (m *Mesh) Assign(t testing.TB, who, role string) proto.Assignment {
	t.Helper()
	var a proto.Assignment
	m.Admin.MustAPI("POST", "/api/v1/assignments", proto.Assignment{User: who, Role: role, Cluster: MeshCluster}, &a)
	return a
}

// TestUser is a User of a MeshSuite bound to a test: its Must methods
// fail that test. It is not safe for concurrent use by tests other than
// the one it is bound to (see For).
type TestUser struct {
	*User
	t testing.TB
	s *MeshSuite
}

// T returns the test u is bound to.
func (u *TestUser) T() testing.TB { return u.t }

// For returns u bound to t, e.g. a subtest of the test that created u.
func (u *TestUser) For(t testing.TB) *TestUser {
	c := *u
	c.t = t
	return &c
}

// MustRun runs `clustral args...` as u and returns its standard output.
func (u *TestUser) MustRun(args ...string) string {
	u.t.Helper()
	out, _, err := u.Run(context.Background(), args...)
	if err != nil {
		u.t.Fatal(err)
	}
	return out
}

// RunCode runs `clustral args...` as u and returns its output and exit
// code; it fails the test only if clustral could not be run.
func (u *TestUser) RunCode(args ...string) (stdout, stderr string, code int) {
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

// MustLogin logs u in to the suite's coordinator (User.LoginWithToken).
func (u *TestUser) MustLogin() {
	u.t.Helper()
	if err := u.TryLogin(); err != nil {
		u.t.Fatal(err)
	}
}

// TryLogin logs u in to the suite's coordinator (User.LoginWithToken) and
// returns the error of a refused login, whose text holds clustral's
// output.
func (u *TestUser) TryLogin() error {
	return u.LoginWithToken(context.Background(), u.s.Env.Dex, meshClientID, u.s.OIDCSecret, u.s.CoordURL())
}

// MustLoginAt logs u in to the coordinator at coordURL, e.g. one of
// several replicas, which u's later commands then use.
func (u *TestUser) MustLoginAt(coordURL string) {
	u.t.Helper()
	if err := u.LoginWithToken(context.Background(), u.s.Env.Dex, meshClientID, u.s.OIDCSecret, coordURL); err != nil {
		u.t.Fatal(err)
	}
}

// MustUp runs `clustral up` as u.
func (u *TestUser) MustUp() {
	u.t.Helper()
	if err := u.Up(context.Background()); err != nil {
		u.t.Fatal(err)
	}
}

// MustAPI calls the coordinator's API as u (User.API).
func (u *TestUser) MustAPI(method, path string, body, out any) {
	u.t.Helper()
	if err := u.API(context.Background(), u.s.CoordURL(), method, path, body, out); err != nil {
		u.t.Fatal(err)
	}
}

// kubectl is u's kubectl in MeshContext with extraEnv added.
func (u *TestUser) kubectl(extraEnv []string) Kubectl {
	k := u.Kubectl()
	k.Context = MeshContext
	k.Env = extraEnv
	return k
}

// RunKubectl runs `kubectl --context clustral-kind args...` as u.
func (u *TestUser) RunKubectl(args ...string) (KubectlResult, error) {
	return u.RunKubectlEnv(nil, args...)
}

// RunKubectlEnv is RunKubectl with extraEnv added to kubectl's
// environment.
func (u *TestUser) RunKubectlEnv(extraEnv []string, args ...string) (KubectlResult, error) {
	return u.kubectl(extraEnv).Run(context.Background(), args...)
}

// StartKubectl starts `kubectl --context clustral-kind args...` as u in
// the background for t, with extraEnv added and stdin (nil: none).
func (u *TestUser) StartKubectl(t testing.TB, extraEnv []string, stdin io.Reader, args ...string) *BackgroundKubectl {
	t.Helper()
	k := u.kubectl(extraEnv)
	k.Stdin = stdin
	return k.Start(t, args...)
}

// StartKubectlPane starts `kubectl --context clustral-kind args...` as u
// in a Pane for t, on a terminal as a user types it (kubectl exec -it),
// with extraEnv added; the pane is named "kubectl".
func (u *TestUser) StartKubectlPane(t testing.TB, extraEnv []string, args ...string) *Pane {
	t.Helper()
	path, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl: %v", err)
	}
	k := u.kubectl(extraEnv)
	env := append(EnvironWithout("KUBECONFIG=", "TMUX", OwnerEnv+"="), ownerEntry)
	return StartPane(t, PaneOptions{Name: "kubectl", Program: path, Args: k.commandLine(args), Env: append(env, k.Env...), Width: 120, Height: 40})
}

// Helm returns a helm runner for u in MeshContext, keeping helm's
// configuration, cache and data in u's directory.
func (u *TestUser) Helm() Helm {
	return Helm{Dir: filepath.Join(u.Dir, "helm"), Kubeconfig: u.Kubeconfig, Context: MeshContext}
}

// StartK9s starts k9s as u in MeshContext for t (see StartK9s); o's
// Kubeconfig and Context are u's.
func (u *TestUser) StartK9s(t testing.TB, o K9sOptions) *K9s {
	t.Helper()
	o.Kubeconfig, o.Context = u.Kubeconfig, MeshContext
	return StartK9s(t, o)
}

// errorCodeLog finds the X-Clustral-Error-Code response header in the
// request log kubectl writes at -v=8 and above.
var errorCodeLog = regexp.MustCompile(`(?i)X-Clustral-Error-Code:?\s*"?\[?([A-Z_]+)`)

// Refusal is what kubectl showed of a refused request.
type Refusal struct {
	Code    proto.ErrorCode // the last X-Clustral-Error-Code kubectl logged
	Message string          // kubectl's error lines, without the request log
}

// RESTConfig loads u's MeshContext from u's kubeconfig as kubectl would,
// SOCKS proxy and mesh CA included, read now: it keeps working after the
// context is removed from the file.
func (u *TestUser) RESTConfig() *rest.Config {
	u.t.Helper()
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: u.Kubeconfig},
		&clientcmd.ConfigOverrides{CurrentContext: MeshContext},
	).ClientConfig()
	if err != nil {
		u.t.Fatal(err)
	}
	return cfg
}

// KubectlRefused runs RunKubectl at -v=8 and returns the clustral error
// code of its last refused request and its error message, or an error if
// kubectl succeeded or did not run.
func (u *TestUser) KubectlRefused(args ...string) (Refusal, error) {
	res, err := u.RunKubectl(append([]string{"-v=8"}, args...)...)
	if err == nil {
		return Refusal{}, errors.New("kubectl " + strings.Join(args, " ") + " succeeded")
	}
	var ke *KubectlError
	if !errors.As(err, &ke) {
		return Refusal{}, err
	}
	var r Refusal
	if m := errorCodeLog.FindAllStringSubmatch(res.Stderr, -1); len(m) > 0 {
		r.Code = proto.ErrorCode(m[len(m)-1][1])
	}
	var msg []string
	for _, l := range strings.Split(res.Stderr, "\n") {
		if strings.HasPrefix(l, "Error") || strings.HasPrefix(l, "error") {
			msg = append(msg, l)
		}
	}
	r.Message = strings.Join(msg, "\n")
	return r, nil
}

// MustEventually is Eventually for a test: it fails t with f's last
// error.
func MustEventually(t testing.TB, timeout time.Duration, f func(ctx context.Context) error) {
	t.Helper()
	if err := Eventually(context.Background(), timeout, f); err != nil {
		t.Fatal(err)
	}
}

// LastLines returns the last n lines of s.
func LastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// HTTPGet GETs url with a 10s timeout and returns the body of a 200
// answer; any other status is an error carrying the body.
func HTTPGet(url string) (string, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, b)
	}
	return string(b), nil
}

// mergeMaps returns a new map with the entries of a and then b.
func mergeMaps(a, b map[string]string) map[string]string {
	m := maps.Clone(a)
	maps.Copy(m, b)
	return m
}
