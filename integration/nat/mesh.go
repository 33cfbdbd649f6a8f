package nat

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// The Dex users of a Mesh.
var (
	admin = harness.DexUser{Email: "admin@example.com", Password: "admin-pw"}
	alice = harness.DexUser{Email: "alice@example.com", Password: "alice-pw"}
)

const (
	oidcSecret = "nat-coordinator-secret"
	coordPort  = 8443
	// ClusterName is the mesh name of the cluster behind the cluster NAT;
	// Context is its kubeconfig context.
	ClusterName = "edge"
	Context     = "clustral-" + ClusterName
	viewerGroup = "clustral:viewers"
)

// Mesh is clustral running across a Topology: etcd, kube-apiserver, Dex
// and the coordinator (TLS, on Public) in the core namespace, the agent in
// the cluster namespace and alice's `clustral up` and kubectl in the
// laptop namespace. With replicas, the coordinators share an etcd of their
// own (in core too), each on its own port of Public: the agent and the
// administrator use the first, alice the last, so that the two ends of
// the pair are attached to different replicas. The agent reaches kube-apiserver at Public through its
// NAT, as it would reach a control plane outside its LAN.
//
// StartMesh must run in t.Core: the harness binds etcd, the apiserver and
// Dex on the loopback of the namespace it runs in. A Mesh is safe for
// concurrent use by the methods that run commands; Close is not.
type Mesh struct {
	Env  *harness.Env
	Topo *Topology
	// CoordURL is the coordinator the agent and the admin use; AliceURL
	// the one alice uses (the same without replicas); URLs every replica.
	CoordURL string
	AliceURL string
	URLs     []string
	Alice    *harness.User // runs in the laptop namespace
	Admin    *harness.User // runs in core

	bin    string
	dir    string
	caPEM  []byte
	hc     *http.Client
	etcd   *harness.EtcdCluster
	coords []*harness.Process
	agent  *harness.Process
	// coordArgs are added to each coordinator's flags.
	coordArgs []string
}

// StartMesh starts the components with their files under dir, joins the
// agent and logs alice in, but does not run `clustral up` (see Up). bin
// is the clustral binary; coordArgs are added to each coordinator's
// flags. On error it stops whatever it started.
func StartMesh(ctx context.Context, topo *Topology, bin, dir string, coordArgs ...string) (*Mesh, error) {
	return StartMeshReplicas(ctx, topo, bin, dir, 1, coordArgs...)
}

// StartMeshReplicas is StartMesh with n coordinator replicas on etcd
// when n > 1.
func StartMeshReplicas(ctx context.Context, topo *Topology, bin, dir string, n int, coordArgs ...string) (m *Mesh, err error) {
	m = &Mesh{Topo: topo, bin: bin, dir: dir, coordArgs: coordArgs}
	for i := range max(n, 1) {
		m.URLs = append(m.URLs, "https://"+net.JoinHostPort(Public.String(), strconv.Itoa(coordPort+i)))
	}
	m.CoordURL, m.AliceURL = m.URLs[0], m.URLs[len(m.URLs)-1]
	started := m // the returns below set m to nil
	defer func() {
		if err != nil {
			started.Close()
		}
	}()
	m.Env, err = harness.Start(ctx, harness.Options{
		APIServer: harness.APIServerOptions{
			Identities: []harness.Identity{harness.AgentIdentity},
			// Reachable from the cluster namespace at Public, beside
			// loopback; the last --bind-address wins.
			ExtraArgs: []string{"--bind-address=0.0.0.0"},
		},
		SkipControllerManager: true,
		Dex: &harness.DexOptions{
			Users:   []harness.DexUser{admin, alice},
			Clients: []harness.DexClient{{ID: "clustral", Secret: oidcSecret, RedirectURIs: []string{m.CoordURL + "/oidc/callback"}}},
		},
	})
	if err != nil {
		return nil, err
	}
	if err = m.grantRBAC(ctx); err != nil {
		return nil, err
	}
	if err = m.startCoordinators(ctx); err != nil {
		return nil, err
	}

	m.Admin = harness.NewUser(bin, filepath.Join(dir, "admin"), admin)
	wrapper := filepath.Join(dir, "clustral-laptop")
	script := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", topo.Laptop, bin)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		return nil, err
	}
	m.Alice = harness.NewUser(wrapper, filepath.Join(dir, "alice"), alice)
	if err := m.login(ctx, m.Admin, m.CoordURL); err != nil {
		return nil, err
	}
	if err := m.login(ctx, m.Alice, m.AliceURL); err != nil {
		return nil, err
	}
	var cl proto.CreateClusterResponse
	for _, c := range []struct {
		path     string
		req, out any
	}{
		{"/api/v1/clusters", proto.CreateClusterRequest{Name: ClusterName}, &cl},
		{"/api/v1/roles", proto.Role{Name: "viewer", Groups: []string{viewerGroup}}, nil},
		{"/api/v1/assignments", proto.Assignment{User: alice.Email, Role: "viewer", Cluster: ClusterName}, nil},
	} {
		if err := m.API(ctx, "POST", c.path, c.req, c.out); err != nil {
			return nil, err
		}
	}
	if err := m.startAgent(ctx, cl.JoinToken); err != nil {
		return nil, err
	}
	return m, nil
}

// grantRBAC lets the agent impersonate and alice's group read ConfigMaps.
func (m *Mesh) grantRBAC(ctx context.Context) error {
	c := m.Env.APIServer.Client()
	if err := harness.GrantImpersonation(ctx, c, harness.AgentIdentity.User); err != nil {
		return err
	}
	_, err := c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "nat-configmap-reader"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"configmaps", "namespaces"}, Verbs: []string{"get", "list", "watch"},
		}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	for name, role := range map[string]string{"nat-discovery": "system:discovery", "nat-readers": "nat-configmap-reader"} {
		if err := harness.BindClusterRole(ctx, c, name, role, rbacv1.GroupKind, viewerGroup); err != nil {
			return err
		}
	}
	return nil
}

// startCoordinators starts one coordinator per URL, on etcd when there
// are several.
func (m *Mesh) startCoordinators(ctx context.Context) error {
	dir := filepath.Join(m.dir, "coord")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := harness.NewCA("clustral-nat-coordinator-ca")
	if err != nil {
		return err
	}
	cert, key, err := ca.Issue("coordinator", nil, []string{Public.String()}, false)
	if err != nil {
		return err
	}
	m.caPEM = ca.CertPEM
	m.hc = ca.HTTPClient()
	files := map[string][]byte{"ca.pem": ca.CertPEM, "tls.crt": cert, "tls.key": key, "oidc-ca.pem": m.Env.Dex.CAPEM}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	var shared []string
	if len(m.URLs) > 1 {
		edir := filepath.Join(dir, "etcd")
		if err := os.MkdirAll(edir, 0o700); err != nil {
			return err
		}
		if m.etcd, err = harness.StartEtcdCluster(ctx, edir, 1); err != nil {
			return err
		}
		shared = []string{"--store", "etcd", "--etcd-endpoints", strings.Join(m.etcd.URLs, ",")}
	}
	for i, u := range m.URLs {
		pu, err := url.Parse(u)
		if err != nil {
			return err
		}
		args := append([]string{"coordinator",
			"--listen", pu.Host,
			"--data-dir", filepath.Join(dir, "data-"+strconv.Itoa(i)),
			"--tls-cert", filepath.Join(dir, "tls.crt"), "--tls-key", filepath.Join(dir, "tls.key"),
			"--oidc-issuer", m.Env.Dex.Issuer, "--oidc-client-id", "clustral", "--oidc-ca-file", filepath.Join(dir, "oidc-ca.pem"),
			"--admin", admin.Email,
			"--log-format", "text",
		}, shared...)
		args = append(args, m.coordArgs...)
		if shared != nil {
			// Each replica has its own discovery port, as each host
			// behind a load balancer would.
			args = append(args, "--stun-listen", net.JoinHostPort(Public.String(), strconv.Itoa(3478+i)))
			lp, err := harness.FreePort()
			if err != nil {
				return err
			}
			args = append(args, "--replica-listen", "127.0.0.1:"+strconv.Itoa(lp))
		}
		env := append(os.Environ(), "CLUSTRAL_OIDC_CLIENT_SECRET="+oidcSecret)
		p, err := harness.StartProcess("coordinator", m.bin, args, env, filepath.Join(dir, "coordinator-"+strconv.Itoa(i)+".log"))
		if err != nil {
			return err
		}
		m.coords = append(m.coords, p)
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = p.WaitHTTPClient(wctx, m.hc, u+"/readyz")
		cancel()
		if err != nil {
			return fmt.Errorf("coordinator %s not ready: %w", u, err)
		}
	}
	return nil
}

// caFile is the coordinator's CA bundle on disk.
func (m *Mesh) caFile() string { return filepath.Join(m.dir, "coord", "ca.pem") }

// login logs u in at coordURL with an ID token from Dex
// (--id-token-file).
func (m *Mesh) login(ctx context.Context, u *harness.User, coordURL string) error {
	return u.LoginWithToken(ctx, m.Env.Dex, "clustral", oidcSecret, coordURL, "--ca-file", m.caFile())
}

// startAgent runs the agent in the cluster namespace and waits until the
// coordinator sees it online.
func (m *Mesh) startAgent(ctx context.Context, joinToken string) error {
	dir := filepath.Join(m.dir, "agent")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tf := filepath.Join(dir, "join-token")
	if err := os.WriteFile(tf, []byte(joinToken), 0o600); err != nil {
		return err
	}
	// The apiserver's certificate names 127.0.0.1; the agent reaches it at
	// Public and checks the certificate against 127.0.0.1.
	u, err := url.Parse(m.Env.APIServer.URL)
	if err != nil {
		return err
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["core"] = &clientcmdapi.Cluster{
		Server:                   "https://" + net.JoinHostPort(Public.String(), u.Port()),
		CertificateAuthorityData: m.Env.APIServer.CAPEM,
		TLSServerName:            "127.0.0.1",
	}
	kc.AuthInfos["agent"] = &clientcmdapi.AuthInfo{Token: harness.AgentIdentity.Token}
	kc.Contexts["agent"] = &clientcmdapi.Context{Cluster: "core", AuthInfo: "agent"}
	kc.CurrentContext = "agent"
	kcPath := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kcPath); err != nil {
		return err
	}
	args := []string{"netns", "exec", m.Topo.Cluster, m.bin, "agent",
		"--coordinator", m.CoordURL, "--ca-file", m.caFile(),
		"--join-token-file", tf, "--kubeconfig", kcPath,
		"--health-listen", "127.0.0.1:9090", "--log-format", "text", "--audit-dir", filepath.Join(dir, "audit")}
	p, err := harness.StartProcess("agent", "ip", args, os.Environ(), filepath.Join(dir, "agent.log"))
	if err != nil {
		return err
	}
	m.agent = p
	return poll(ctx, 30*time.Second, func() error {
		if p.Exited() {
			return fmt.Errorf("agent exited:\n%s", p.Tail(30))
		}
		var cls []proto.Cluster
		if err := m.API(ctx, "GET", "/api/v1/clusters", nil, &cls); err != nil {
			return err
		}
		for _, c := range cls {
			if c.Name == ClusterName && len(c.Agents) > 0 && c.Agents[0].Online {
				return nil
			}
		}
		return errors.New("the agent is not online")
	})
}

// Up runs alice's `clustral up` in the laptop namespace.
func (m *Mesh) Up(ctx context.Context) error {
	_, _, err := m.Alice.Run(ctx, "up", "--kubeconfig", m.Alice.Kubeconfig)
	return err
}

// Down runs alice's `clustral down`.
func (m *Mesh) Down(ctx context.Context) error {
	return m.Alice.Down(ctx)
}

// Path returns how alice's `clustral up` reaches the cluster's agent, as
// `clustral status -o json` reports it: "direct", "relayed" or "", and
// the last probe round trip on that path in milliseconds (0 if none).
func (m *Mesh) Path(ctx context.Context) (path string, latencyMS float64, err error) {
	out, _, err := m.Alice.Run(ctx, "status", "-o", "json")
	if err != nil {
		return "", 0, err
	}
	var st struct {
		Agents []struct {
			Cluster   string  `json:"cluster"`
			Path      string  `json:"path"`
			LatencyMS float64 `json:"latency_ms"`
		} `json:"agents"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return "", 0, fmt.Errorf("status -o json: %w: %s", err, out)
	}
	for _, a := range st.Agents {
		if a.Cluster == ClusterName {
			return a.Path, a.LatencyMS, nil
		}
	}
	return "", 0, nil
}

// WaitPath waits up to timeout until both ends use the path want
// ("direct" or "relayed"): alice's `clustral up`, as Path reports it, and
// the agent, as its log last said (each end confirms a direct path by its
// own probe, so one may be direct a probe interval before the other).
func (m *Mesh) WaitPath(ctx context.Context, want string, timeout time.Duration) error {
	var last, lastAgent string
	err := poll(ctx, timeout, func() error {
		p, _, err := m.Path(ctx)
		if err != nil {
			return err
		}
		last, lastAgent = p, m.agentPath()
		if p != want || lastAgent != want {
			return fmt.Errorf("path is %q, the agent's %q", p, lastAgent)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the %s path (last %q, the agent's %q): %w", want, last, lastAgent, err)
	}
	return nil
}

// agentPath returns the agent's path to alice's device as its log last
// said: "direct" after "direct path up", else "relayed". The device is
// the agent's only peer.
func (m *Mesh) agentPath() string {
	b, err := os.ReadFile(m.agent.LogPath())
	if err != nil {
		return ""
	}
	if bytes.LastIndex(b, []byte(`msg="direct path up"`)) > bytes.LastIndex(b, []byte(`msg="direct path lost`)) {
		return "direct"
	}
	return "relayed"
}

// RelayStats returns the coordinator relay's counters, summed over the
// replicas.
func (m *Mesh) RelayStats(ctx context.Context) (proto.RelayStats, error) {
	var sum proto.RelayStats
	for _, u := range m.URLs {
		var s proto.RelayStats
		if err := harness.CallAPIWith(ctx, m.hc, u, "GET", proto.RelayPath+"/stats", "", nil, &s); err != nil {
			return sum, err
		}
		sum.Conns += s.Conns
		sum.Packets += s.Packets
		sum.Bytes += s.Bytes
		sum.DroppedRate += s.DroppedRate
		sum.DroppedQueue += s.DroppedQueue
		sum.DroppedNoPeer += s.DroppedNoPeer
		sum.DroppedTooLarge += s.DroppedTooLarge
		sum.STUNRequests += s.STUNRequests
		sum.ForwardedOut += s.ForwardedOut
		sum.ForwardedIn += s.ForwardedIn
		sum.DroppedReplica += s.DroppedReplica
	}
	return sum, nil
}

// API calls the coordinator's API as the admin.
func (m *Mesh) API(ctx context.Context, method, path string, body, out any) error {
	tok, err := m.Admin.SessionToken()
	if err != nil {
		return err
	}
	return m.call(ctx, method, path, tok, body, out)
}

func (m *Mesh) call(ctx context.Context, method, path, token string, body, out any) error {
	return harness.CallAPIWith(ctx, m.hc, m.CoordURL, method, path, token, body, out)
}

// Kubectl returns kubectl with args, run in the laptop namespace with
// alice's kubeconfig and the cluster's context. It runs in its own
// process group, killed when ctx is done.
func (m *Mesh) Kubectl(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"netns", "exec", m.Topo.Laptop, "kubectl", "--kubeconfig", m.Alice.Kubeconfig, "--context", Context}, args...)
	cmd := exec.CommandContext(ctx, "ip", full...)
	cmd.Env = append(harness.EnvironWithout("KUBECONFIG="), "NO_COLOR=1")
	harness.KillGroupWith(cmd)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Logs returns the tails of the coordinator's and the agent's logs.
func (m *Mesh) Logs() string {
	var b strings.Builder
	for _, p := range append(slices.Clone(m.coords), m.agent) {
		if p != nil {
			fmt.Fprintf(&b, "--- %s\n%s\n", p.LogPath(), p.Tail(40))
		}
	}
	if up, err := os.ReadFile(filepath.Join(m.Alice.Dir, "config", "profiles", "default", "up.log")); err == nil {
		lines := strings.Split(string(up), "\n")
		fmt.Fprintf(&b, "--- up.log\n%s\n", strings.Join(lines[max(0, len(lines)-40):], "\n"))
	}
	return b.String()
}

// Close stops alice's tunnel, the agent, the coordinator and the
// components. Processes left in the laptop and cluster namespaces die
// with the Topology.
func (m *Mesh) Close() {
	if m.Alice != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		m.Down(ctx)
		cancel()
	}
	for _, p := range append([]*harness.Process{m.agent}, m.coords...) {
		if p != nil {
			p.Stop()
		}
	}
	if m.etcd != nil {
		m.etcd.Close()
	}
	if m.Env != nil {
		m.Env.Close()
	}
}

// poll calls f until it succeeds, ctx is done, or timeout passes, and
// returns f's last error then.
func poll(ctx context.Context, timeout time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-t.C:
		}
	}
}

// BulkNamespace holds the ConfigMaps of CreateBulk; BulkPath lists them.
const (
	BulkNamespace = "bulk"
	BulkPath      = "/api/v1/namespaces/" + BulkNamespace + "/configmaps"
)

// CreateBulk creates BulkNamespace with n ConfigMaps of size random bytes
// each, so a GET of BulkPath moves at least n*size bytes over the wire
// even when the response is compressed.
func CreateBulk(ctx context.Context, c kubernetes.Interface, n, size int) error {
	_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: BulkNamespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", BulkNamespace, err)
	}
	for i := range n {
		data := make([]byte, size)
		rand.Read(data)
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bulk-%d", i)}, BinaryData: map[string][]byte{"data": data}}
		if _, err := c.CoreV1().ConfigMaps(BulkNamespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create bulk ConfigMap %d: %w", i, err)
		}
	}
	return nil
}
