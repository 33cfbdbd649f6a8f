package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

const (
	cluster     = "bench"
	kubeContext = "clustral-" + cluster
	oidcClient  = "clustral"
	oidcSecret  = "bench-coordinator-secret-0123456789"
	// readerGroup is the Kubernetes group of the bench role, bound to a
	// ClusterRole that may read configmaps.
	readerGroup = "clustral:bench-readers"
	// configMap is the small object the GETs fetch, in namespace default.
	configMap = "bench"
)

var (
	adminUser = harness.DexUser{Email: "admin@example.com", Password: "admin-pw"}
	benchUser = harness.DexUser{Email: "alice@example.com", Password: "alice-pw", Groups: []string{"dev"}}
)

// mesh is everything the mesh measurements run against. Close stops it
// all, whatever state it is in.
type mesh struct {
	dir   string
	env   *harness.Env
	coord *harness.Coordinator
	agent *harness.Agent
	// agentDir holds the spool and recordings of the last agent started.
	agentDir string
	admin    *harness.User
	user     *harness.User
	// assignment is the bench user's current assignment id ("" if none).
	assignment string
	// bin, joinToken and agentKubeconfig start another agent of the
	// cluster (startAgent).
	bin, joinToken, agentKubeconfig string
	agents                          int // agents started, for their directories
	// pprof maps "agent" and "up" to the address their profiles are
	// served on, with -profile-dir (see startProfiles).
	pprof map[string]string
}

// startMesh starts etcd, kube-apiserver and Dex, a coordinator with one
// cluster and a role, an agent for the cluster, and brings the bench user
// up. On error the returned mesh (if non-nil) holds what was started and
// must still be closed.
func startMesh(ctx context.Context) (*mesh, error) {
	dir, err := tempDir()
	if err != nil {
		return nil, err
	}
	m := &mesh{dir: dir, pprof: make(map[string]string)}
	bin, err := harness.ClustralBinary(dir)
	if err != nil {
		return m, err
	}
	port, err := harness.FreePort()
	if err != nil {
		return m, err
	}
	coordURL := fmt.Sprintf("http://127.0.0.1:%d", port)

	progress("starting etcd, kube-apiserver and Dex")
	sctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	m.env, err = harness.Start(sctx, harness.Options{
		APIServer: harness.APIServerOptions{Identities: []harness.Identity{harness.AgentIdentity}},
		// The bench role needs no built-in aggregated ClusterRoles.
		SkipControllerManager: true,
		Dex: &harness.DexOptions{
			Users:   []harness.DexUser{adminUser, benchUser},
			Clients: []harness.DexClient{{ID: oidcClient, Secret: oidcSecret, RedirectURIs: []string{coordURL + "/oidc/callback"}}},
		},
	})
	if err != nil {
		return m, fmt.Errorf("start components: %w", err)
	}
	if err := prepareAPIServer(sctx, m.env.APIServer); err != nil {
		return m, err
	}

	progress("starting coordinator and agent")
	m.coord, err = harness.StartCoordinator(sctx, bin, filepath.Join(dir, "coordinator"), harness.CoordinatorOptions{
		Port: port, Dex: m.env.Dex, ClientID: oidcClient, ClientSecret: oidcSecret, Admins: []string{adminUser.Email},
		// Every simulated user logs in from this one address, and each
		// registers up to scaleDevicesPerUser devices.
		ExtraArgs: []string{"--source-rate=-1", fmt.Sprintf("--max-devices-per-user=%d", max(scaleDevicesPerUser, devicesPerUser))},
	})
	if err != nil {
		return m, err
	}
	m.admin = harness.NewUser(bin, filepath.Join(dir, "admin"), adminUser)
	if err := m.admin.LoginWithToken(sctx, m.env.Dex, oidcClient, oidcSecret, m.coord.URL); err != nil {
		return m, fmt.Errorf("admin login: %w", err)
	}
	var cl proto.CreateClusterResponse
	if err := m.api(sctx, "POST", "/api/v1/clusters", proto.CreateClusterRequest{Name: cluster}, &cl); err != nil {
		return m, err
	}
	if err := m.api(sctx, "POST", "/api/v1/roles", proto.Role{Name: "reader", Groups: []string{readerGroup}}, nil); err != nil {
		return m, err
	}
	m.bin, m.joinToken = bin, cl.JoinToken
	m.agentKubeconfig = filepath.Join(dir, "agent-kubeconfig")
	if err := m.env.APIServer.WriteKubeconfig(m.agentKubeconfig, "agent", harness.AgentIdentity.Token); err != nil {
		return m, err
	}
	m.agent, err = m.startAgent(sctx)
	if err != nil {
		return m, err
	}

	progress("logging in and bringing the user up")
	m.user = harness.NewUser(bin, filepath.Join(dir, "user"), benchUser)
	if err := m.user.LoginWithToken(sctx, m.env.Dex, oidcClient, oidcSecret, m.coord.URL); err != nil {
		return m, fmt.Errorf("user login: %w", err)
	}
	if err := m.grant(sctx); err != nil {
		return m, err
	}
	upPprof, addr, err := pprofArgs()
	if err != nil {
		return m, err
	}
	if addr != "" {
		m.pprof["up"] = addr
	}
	if _, _, err := m.user.Run(sctx, append([]string{"up", "--kubeconfig", m.user.Kubeconfig}, upPprof...)...); err != nil {
		return m, err
	}
	return m, nil
}

// startAgent starts another agent of the bench cluster, in a directory of
// its own, and returns once it is ready.
func (m *mesh) startAgent(ctx context.Context, extraArgs ...string) (*harness.Agent, error) {
	m.agents++
	m.agentDir = filepath.Join(m.dir, fmt.Sprintf("agent-%d", m.agents))
	// Recordings of the exec bench's 64 MiB stream fit under the cap.
	// The GET bench makes about 200 requests a second as one user, over
	// the default per-user limit (100/s, burst 200): its 429s, which
	// client-go retries after Retry-After's second, were the 1 s outliers
	// in proxy_get_p99_us. The limiter stays on, so its cost is measured.
	args := []string{"--recording-max-bytes", "1073741824", "--rate-limit-qps", "1000000", "--rate-limit-burst", "1000000"}
	pprof, addr, err := pprofArgs()
	if err != nil {
		return nil, err
	}
	if addr != "" {
		m.pprof["agent"] = addr
	}
	args = append(args, pprof...)
	return harness.StartAgent(ctx, m.bin, m.agentDir, m.coord.URL, m.joinToken, m.agentKubeconfig, append(args, extraArgs...)...)
}

// prepareAPIServer lets the agent impersonate, binds the bench role's
// group to a configmap reader, and creates the configmap the GETs fetch.
func prepareAPIServer(ctx context.Context, api *harness.APIServer) error {
	c := api.Client()
	if err := harness.GrantImpersonation(ctx, c, harness.AgentIdentity.User); err != nil {
		return fmt.Errorf("grant impersonation: %w", err)
	}
	_, err := c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "bench-reader"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch"},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create ClusterRole: %w", err)
	}
	if err := harness.BindClusterRole(ctx, c, "bench-readers", "bench-reader", rbacv1.GroupKind, readerGroup); err != nil {
		return fmt.Errorf("bind ClusterRole: %w", err)
	}
	_, err = c.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: configMap},
		Data:       map[string]string{"greeting": "hello"},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create configmap: %w", err)
	}
	return nil
}

// api calls the coordinator as the admin.
func (m *mesh) api(ctx context.Context, method, path string, body, out any) error {
	return m.admin.API(ctx, m.coord.URL, method, path, body, out)
}

// grant assigns the bench role on the cluster to the bench user.
func (m *mesh) grant(ctx context.Context) error {
	var a proto.Assignment
	if err := m.api(ctx, "POST", "/api/v1/assignments", proto.Assignment{User: benchUser.Email, Role: "reader", Cluster: cluster}, &a); err != nil {
		return err
	}
	m.assignment = a.ID
	return nil
}

// ensureGranted grants the bench user the role when it has none now.
func (m *mesh) ensureGranted(ctx context.Context) error {
	if m.assignment != "" {
		return nil
	}
	return m.grant(ctx)
}

// revoke deletes the bench user's assignment.
func (m *mesh) revoke(ctx context.Context) error {
	if err := m.api(ctx, "DELETE", "/api/v1/assignments/"+m.assignment, nil, nil); err != nil {
		return err
	}
	m.assignment = ""
	return nil
}

// Close takes the user down and stops the agent, the coordinator and the
// components, then removes the run's files.
func (m *mesh) Close() {
	progress("stopping everything")
	if m.user != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := m.user.Down(ctx); err != nil {
			progress("clustral down: %v", err)
		}
		cancel()
		killUp(m.user)
	}
	if m.agent != nil {
		m.agent.Proc.Stop()
	}
	if m.coord != nil {
		m.coord.Stop()
	}
	if m.env != nil {
		if err := m.env.Close(); err != nil {
			progress("stop components: %v", err)
		}
	}
	if os.Getenv("CLUSTRAL_TEST_KEEP") == "" {
		os.RemoveAll(m.dir)
	} else {
		progress("keeping %s", m.dir)
	}
}

// killUp kills the user's background `clustral up` if `clustral down`
// left it running: it runs in its own session and would outlive us.
func killUp(u *harness.User) {
	b, err := os.ReadFile(filepath.Join(u.Dir, "config", "profiles", "default", "up.json"))
	if err != nil {
		return
	}
	var st struct {
		PID int `json:"pid"`
	}
	if json.Unmarshal(b, &st) != nil || st.PID <= 0 {
		return
	}
	// A stale file may name a recycled pid: kill only a clustral up.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", st.PID))
	if err != nil || !bytes.Contains(cmdline, []byte("up\x00--foreground")) {
		return
	}
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err == nil {
		progress("killed clustral up (pid %d)", st.PID)
	} else if !errors.Is(err, syscall.ESRCH) {
		progress("kill clustral up (pid %d): %v", st.PID, err)
	}
}
