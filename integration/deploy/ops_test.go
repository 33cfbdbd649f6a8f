package deploy

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/crypto/curve25519"
	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// This file runs clustral as deployed: a coordinator with real logins,
// an agent with the service account token and RBAC of deploy/agent, and
// the operations around them (metrics, backup and restore, the manifest
// of clusters add).

// The users in Dex.
var admin, alice = harness.Admin, harness.Alice

const (
	oidcClient = "clustral"
	oidcSecret = "coordinator-secret-0123456789"
)

// startCoordinator starts a coordinator whose files (data/coordinator.db
// among them) live in dir, with admin as administrator.
func startCoordinator(t *testing.T, dir string) *harness.Coordinator {
	t.Helper()
	return startCoordinatorOn(t, dir, 0)
}

// startCoordinatorOn is startCoordinator on a given port (0: any free
// one), with extra flags.
func startCoordinatorOn(t *testing.T, dir string, port int, extra ...string) *harness.Coordinator {
	t.Helper()
	c, err := harness.StartCoordinator(t.Context(), clustral(t), dir, harness.CoordinatorOptions{
		Port: port,
		Dex:  env.Dex, ClientID: oidcClient, ClientSecret: oidcSecret, Admins: []string{admin.Email},
		// Several coordinators run at once here; none needs NAT traversal.
		ExtraArgs: append([]string{"--stun-listen", "0"}, extra...),
	})
	if err != nil {
		t.Fatal(err)
	}
	c.StopAtEnd(t, 40)
	return c
}

// user is a person with the clustral CLI, logged in to one coordinator.
type user struct {
	*harness.User
	t     *testing.T
	coord string
}

func login(t *testing.T, d harness.DexUser, coordURL string) *user {
	t.Helper()
	u := &user{User: harness.NewUser(clustral(t), t.TempDir(), d), t: t, coord: coordURL}
	if err := u.LoginWithToken(t.Context(), env.Dex, oidcClient, oidcSecret, coordURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.User.Down(context.Background()) })
	return u
}

func (u *user) must(args ...string) string {
	u.t.Helper()
	out, _, err := u.Run(u.t.Context(), args...)
	if err != nil {
		u.t.Fatal(err)
	}
	return out
}

func (u *user) api(method, path string, body, out any) {
	u.t.Helper()
	if err := u.API(u.t.Context(), u.coord, method, path, body, out); err != nil {
		u.t.Fatal(err)
	}
}

var cmOnce sync.Once

// builtinRoles makes sure the aggregated ClusterRoles (view, edit, admin)
// have their rules, which kube-controller-manager fills in: it starts one
// for the rest of the package's run if the environment has none.
func builtinRoles(t *testing.T) {
	t.Helper()
	cmOnce.Do(func() {
		if env.ControllerManager != nil {
			return
		}
		cm, err := harness.StartControllerManager(context.Background(), filepath.Join(env.Dir, "controller-manager"), env.APIServer)
		if err != nil {
			t.Fatalf("start kube-controller-manager: %v", err)
		}
		env.ControllerManager = cm // Env.Close stops it
	})
	c := env.APIServer.Client()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := c.RbacV1().ClusterRoles().Get(t.Context(), "view", metav1.GetOptions{})
		if err == nil && len(r.Rules) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ClusterRole view has no rules after 30s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// scrape reads a Prometheus text exposition.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return mf
}

// sum adds up the values of the series of family name whose labels
// include want (counters, gauges, and histograms' sample counts). ok is
// false if there is no such series.
func sum(mf map[string]*dto.MetricFamily, name string, want map[string]string) (v float64, ok bool) {
	f := mf[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && labels[k] == v
		}
		if !match {
			continue
		}
		ok = true
		switch {
		case m.Counter != nil:
			v += m.Counter.GetValue()
		case m.Gauge != nil:
			v += m.Gauge.GetValue()
		case m.Histogram != nil:
			v += float64(m.Histogram.GetSampleCount())
		}
	}
	return v, ok
}

// TestAgentAsDeployed runs an agent the way deploy/agent runs it: as the
// service account clustral/clustral-agent with exactly the base's RBAC,
// authenticated by a bound token from the TokenRequest API. Through the
// mesh, a user with a role whose group is bound to view reads the
// cluster as themself; the token on its own may do nothing but
// impersonate.
func TestAgentAsDeployed(t *testing.T) {
	env.LogOnFailure(t)
	installAgent(t)
	builtinRoles(t)
	ctx := t.Context()
	kube := env.APIServer.Client()

	tr, err := kube.CoreV1().ServiceAccounts(agentNS).CreateToken(ctx, agentSA,
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s: %v", agentUser, err)
	}
	agentDir := t.TempDir()
	kc := filepath.Join(agentDir, "kubeconfig")
	if err := env.APIServer.WriteKubeconfig(kc, agentSA, tr.Status.Token); err != nil {
		t.Fatal(err)
	}

	const group = "clustral:deployed-viewers"
	if err := harness.BindClusterRole(ctx, kube, "clustral-deployed-viewers", "view", rbacv1.GroupKind, group); err != nil {
		t.Fatal(err)
	}
	probe := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "deployed-probe", Namespace: "default"}, Data: map[string]string{"k": "v"}}
	if _, err := kube.CoreV1().ConfigMaps("default").Create(ctx, probe, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	coord := startCoordinator(t, t.TempDir())
	adm := login(t, admin, coord.URL)
	var out struct {
		JoinToken string `json:"join_token"`
	}
	if err := json.Unmarshal([]byte(adm.must("clusters", "add", "deployed", "-o", "json")), &out); err != nil || out.JoinToken == "" {
		t.Fatalf("clusters add: %v %+v", err, out)
	}
	al := login(t, alice, coord.URL) // users exist from their first login
	adm.api("POST", "/api/v1/roles", proto.Role{Name: "viewer", Groups: []string{group}}, nil)
	adm.api("POST", "/api/v1/assignments", proto.Assignment{User: alice.Email, Role: "viewer", Cluster: "deployed"}, nil)

	agent, err := harness.StartAgent(ctx, clustral(t), agentDir, coord.URL, out.JoinToken, kc)
	if err != nil {
		t.Fatal(err)
	}
	agent.Proc.StopAtEnd(t, 40)

	if err := al.Up(ctx); err != nil {
		t.Fatal(err)
	}
	k := al.Kubectl()
	kubectl := func(args ...string) (harness.KubectlResult, error) {
		return k.Run(ctx, append([]string{"--context", "clustral-deployed"}, args...)...)
	}

	t.Run("impersonated kubectl", func(t *testing.T) {
		res, err := kubectl("auth", "whoami", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var who authnv1.SelfSubjectReview
		if err := json.Unmarshal([]byte(res.Stdout), &who); err != nil {
			t.Fatal(err)
		}
		if u := who.Status.UserInfo; u.Username != alice.Email || !slices.Contains(u.Groups, group) {
			t.Errorf("through the mesh, kube-apiserver sees %+v; want %s in %s", u, alice.Email, group)
		}
		if res, err := kubectl("-n", "default", "get", "configmap", "deployed-probe", "-o", "name"); err != nil || strings.TrimSpace(res.Stdout) != "configmap/deployed-probe" {
			t.Errorf("get configmap as a viewer: %q, %v", res.Stdout, err)
		}
		if _, err := kubectl("get", "pods", "-A"); err != nil {
			t.Errorf("list pods as a viewer: %v", err)
		}
		// view does not reach secrets; the apiserver judges alice, not the agent.
		res, err = kubectl("-n", agentNS, "get", "secrets")
		if err == nil || !strings.Contains(res.Stderr, "Forbidden") || !strings.Contains(res.Stderr, alice.Email) {
			t.Errorf("list secrets as a viewer: err %v, stderr %q; want Forbidden for %s", err, res.Stderr, alice.Email)
		}
	})

	t.Run("the token alone", func(t *testing.T) {
		c := env.APIServer.ClientFor(tr.Status.Token)
		if _, err := c.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("list pods with the agent's token: err = %v, want Forbidden", err)
		}
		if _, err := c.CoreV1().Secrets(agentNS).Get(ctx, "clustral-join-token", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("get secret with the agent's token: err = %v, want Forbidden", err)
		}
		if _, err := c.CoreV1().ConfigMaps("default").Get(ctx, "deployed-probe", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("get configmap with the agent's token: err = %v, want Forbidden", err)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		am := scrape(t, agent.HealthURL+"/metrics")
		cluster := map[string]string{"cluster": "deployed"}
		for _, tt := range []struct {
			name   string
			labels map[string]string
			min    float64
		}{
			{"clustral_proxy_requests_total", map[string]string{"code": "200", "verb": "get"}, 2}, // whoami's discovery, the configmap
			{"clustral_proxy_requests_total", map[string]string{"code": "200", "verb": "list"}, 1},
			{"clustral_proxy_requests_total", map[string]string{"code": "201", "verb": "create"}, 1}, // the SelfSubjectReview
			{"clustral_proxy_requests_total", map[string]string{"code": "403", "verb": "list"}, 1},   // secrets, refused by the apiserver
			{"clustral_proxy_request_duration_seconds", map[string]string{"verb": "list"}, 2},
			{"clustral_proxy_live_streams", cluster, 0},
			{"clustral_proxy_rate_limited_total", cluster, 0},
			{"clustral_relay_bytes_total", map[string]string{"direction": "tx"}, 0},
			{"clustral_relay_bytes_total", map[string]string{"direction": "rx"}, 0},
			{"clustral_audit_spool_events", cluster, 0},
			{"process_resident_memory_bytes", nil, 1},
		} {
			v, ok := sum(am, tt.name, tt.labels)
			if !ok || v < tt.min {
				t.Errorf("agent %s%v = %v (present %v), want at least %v", tt.name, tt.labels, v, ok, tt.min)
			}
		}
		if v, _ := sum(am, "clustral_proxy_denials_total", nil); v != 0 {
			t.Errorf("agent denials = %v, want 0: every request was allowed by clustral", v)
		}

		cm := scrape(t, coord.URL+"/metrics")
		for _, tt := range []struct {
			name   string
			labels map[string]string
			want   float64
		}{
			{"clustral_coordinator_logins_total", map[string]string{"method": "token", "result": "success"}, 2},
			{"clustral_coordinator_logins_total", map[string]string{"method": "token", "result": "failure"}, 0},
			{"clustral_coordinator_registrations_total", map[string]string{"kind": "agent"}, 1},
			{"clustral_coordinator_registrations_total", map[string]string{"kind": "device"}, 1},
			{"clustral_coordinator_connected_nodes", map[string]string{"kind": "agent"}, 1},
			{"clustral_coordinator_connected_nodes", map[string]string{"kind": "device"}, 1},
		} {
			if v, ok := sum(cm, tt.name, tt.labels); !ok || v != tt.want {
				t.Errorf("coordinator %s%v = %v (present %v), want %v", tt.name, tt.labels, v, ok, tt.want)
			}
		}
		if v, _ := sum(cm, "clustral_coordinator_map_deltas_sent_total", nil); v < 1 {
			t.Errorf("coordinator map deltas sent = %v, want at least 1", v)
		}
	})
}

// TestClustersAddManifest pipes `clustral clusters add --manifest` to
// kube-apiserver's server-side dry run, and checks the objects are the
// ones the DaemonSet of deploy/agent reads.
func TestClustersAddManifest(t *testing.T) {
	env.LogOnFailure(t)
	installAgent(t)
	coord := startCoordinator(t, t.TempDir())
	adm := login(t, admin, coord.URL)
	out, stderr, err := adm.Run(t.Context(), "clusters", "add", "piped", "--manifest", "--manifest-coordinator-url", "https://clustral.example.com:8443")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr, "Cluster piped registered") {
		t.Errorf("stderr = %q", stderr)
	}
	k := kubectlRunner(t)
	k.Stdin = strings.NewReader(out)
	res, err := k.Run(t.Context(), "apply", "--dry-run=server", "-f", "-")
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server -f -: %v", err)
	}
	for _, want := range []string{"secret/clustral-join-token", "configmap/clustral-agent"} {
		if !strings.Contains(res.Stdout, want) {
			t.Errorf("dry run output lacks %s:\n%s", want, res.Stdout)
		}
	}

	objs := parseObjects(t, []byte(out))
	var secret corev1.Secret
	find(t, objs, "Secret").decode(t, &secret)
	var cm corev1.ConfigMap
	find(t, objs, "ConfigMap").decode(t, &cm)
	if len(objs) != 2 {
		t.Errorf("%d objects, want the Secret and the ConfigMap", len(objs))
	}

	// The names and keys are those the DaemonSet reads.
	var ds appsv1.DaemonSet
	find(t, parseObjects(t, kustomize(t, repoPath("deploy", "agent"))), "DaemonSet").decode(t, &ds)
	pod := ds.Spec.Template.Spec
	var secretRef *corev1.SecretVolumeSource
	for _, v := range pod.Volumes {
		if v.Secret != nil {
			secretRef = v.Secret
		}
	}
	if secretRef == nil || secretRef.SecretName != secret.Name || secret.Namespace != agentNS {
		t.Errorf("DaemonSet mounts secret %+v, manifest has %s/%s", secretRef, secret.Namespace, secret.Name)
	} else {
		for _, it := range secretRef.Items {
			if _, ok := secret.Data[it.Key]; !ok {
				t.Errorf("DaemonSet reads key %q of the Secret; the manifest has %v", it.Key, secret.Data)
			}
		}
	}
	found := false
	for _, e := range pod.Containers[0].Env {
		if r := e.ValueFrom; r != nil && r.ConfigMapKeyRef != nil {
			found = true
			if r.ConfigMapKeyRef.Name != cm.Name || cm.Namespace != agentNS || cm.Data[r.ConfigMapKeyRef.Key] == "" {
				t.Errorf("DaemonSet reads configmap %s key %s; manifest has %s/%s %v", r.ConfigMapKeyRef.Name, r.ConfigMapKeyRef.Key, cm.Namespace, cm.Name, cm.Data)
			}
		}
	}
	if !found {
		t.Error("the DaemonSet reads no ConfigMap key")
	}
	if cm.Data["coordinator-url"] != "https://clustral.example.com:8443" {
		t.Errorf("coordinator-url = %q", cm.Data["coordinator-url"])
	}

	// The token in the manifest registers an agent of cluster piped.
	var reg proto.RegisterResponse
	if err := harness.CallAPI(t.Context(), coord.URL, "POST", "/api/v1/agents", string(secret.Data["token"]),
		proto.RegisterAgentRequest{PublicKey: publicKey(t), CSR: agentCSR(t)}, &reg); err != nil || reg.Cluster != "piped" {
		t.Errorf("register with the manifest's token: %+v, %v", reg, err)
	}
}

// publicKey returns a fresh WireGuard public key.
func publicKey(t *testing.T) proto.Key {
	t.Helper()
	var priv [32]byte
	rand.Read(priv[:])
	priv[0] &= 248
	priv[31] = priv[31]&127 | 64
	pub, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		t.Fatal(err)
	}
	var k proto.Key
	copy(k[:], pub)
	return k
}

// agentCSR returns a PEM certificate request for a fresh key.
func agentCSR(t *testing.T) string {
	t.Helper()
	csr, _ := testkit.CSR(t, "agent")
	return csr
}

// listing is what an administrator sees of a coordinator.
type listing struct {
	Users       []string
	Clusters    []string
	Roles       []string
	Assignments []string // user/role/cluster
}

func list(t *testing.T, u *user, coordURL string) listing {
	t.Helper()
	var l listing
	var users []proto.User
	var clusters []proto.Cluster
	var roles []proto.Role
	var asg []proto.Assignment
	for path, out := range map[string]any{"/api/v1/users": &users, "/api/v1/clusters": &clusters, "/api/v1/roles": &roles, "/api/v1/assignments": &asg} {
		if err := u.API(t.Context(), coordURL, "GET", path, nil, out); err != nil {
			t.Fatal(err)
		}
	}
	for _, x := range users {
		l.Users = append(l.Users, x.Login)
	}
	for _, x := range clusters {
		l.Clusters = append(l.Clusters, x.Name)
	}
	for _, x := range roles {
		l.Roles = append(l.Roles, x.Name)
	}
	for _, x := range asg {
		l.Assignments = append(l.Assignments, x.User+x.Group+"/"+x.Role+"/"+x.Cluster)
	}
	for _, s := range [][]string{l.Users, l.Clusters, l.Roles, l.Assignments} {
		slices.Sort(s)
	}
	return l
}

// missing returns the elements of a that b lacks.
func missing(a, b []string) []string {
	var m []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			m = append(m, x)
		}
	}
	return m
}

// TestBackupUnderLoad takes `clustral coordinator backup` while logins,
// agent registrations and role assignments keep arriving, restores it
// into a new coordinator and compares what both serve.
func TestBackupUnderLoad(t *testing.T) { backupUnderLoad(t) }

// TestBackupUnderLoadOnEtcd is TestBackupUnderLoad with the coordinator's
// state in a real etcd (--store etcd): its backup is a bbolt file like
// any other, and restores into a coordinator on the default store as
// deploy/README.md says.
func TestBackupUnderLoadOnEtcd(t *testing.T) {
	e, err := harness.StartEtcd(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	const prefix = "/clustral-backup-test"
	backupUnderLoad(t, "--store", "etcd", "--etcd-endpoints", e.URL, "--etcd-prefix", prefix)
	// The state the load made is in etcd, under the prefix.
	st, err := store.OpenEtcd(t.Context(), store.EtcdConfig{Endpoints: []string{e.URL}, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	clusters := 0
	err = st.View(func(tx store.Tx) error {
		return tx.ForEach(store.Clusters, func(string, []byte) error { clusters++; return nil })
	})
	if err != nil {
		t.Fatal(err)
	}
	if clusters < 2 {
		t.Errorf("etcd holds %d clusters under %s, want the base one and the load's", clusters, prefix)
	}

	// Back to etcd: `clustral coordinator restore` loads a backup into an
	// empty prefix, and a coordinator starts on it.
	file := filepath.Join(t.TempDir(), "etcd-backup.db")
	if err := st.Backup(file); err != nil {
		t.Fatal(err)
	}
	const restoredPrefix = "/clustral-restored"
	cmd := exec.CommandContext(t.Context(), clustral(t), "coordinator", "restore", "--etcd-endpoints", e.URL, "--etcd-prefix", restoredPrefix, file)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("clustral coordinator restore: %v\n%s", err, out)
	}
	if want := fmt.Sprintf("into etcd prefix %s (2 users, %d clusters", restoredPrefix, clusters); !strings.Contains(string(out), want) {
		t.Errorf("restore said %q, want it to contain %q", out, want)
	}
	startCoordinatorOn(t, t.TempDir(), 0, "--store", "etcd", "--etcd-endpoints", e.URL, "--etcd-prefix", restoredPrefix)
}

// backupUnderLoad runs TestBackupUnderLoad with extra coordinator flags
// for the coordinator that is backed up.
func backupUnderLoad(t *testing.T, extra ...string) {
	env.LogOnFailure(t)
	ctx := t.Context()
	// The load logs in and registers from one address far faster than the
	// per-source limit of unauthenticated routes allows; that limit is
	// not what this test is about.
	coord := startCoordinatorOn(t, t.TempDir(), 0, append([]string{"--source-rate=-1"}, extra...)...)
	adm := login(t, admin, coord.URL)
	admTok, err := adm.SessionToken()
	if err != nil {
		t.Fatal(err)
	}
	var cl proto.CreateClusterResponse
	adm.api("POST", "/api/v1/clusters", proto.CreateClusterRequest{Name: "base"}, &cl)
	adm.api("POST", "/api/v1/roles", proto.Role{Name: "viewer", Groups: []string{"viewers"}}, nil)
	login(t, alice, coord.URL)
	before := list(t, adm, coord.URL)

	// The load: three writers until stopLoad, each counting what it did.
	var logins, registrations, assignments, failures atomic.Int64
	fail := func(what string, err error) {
		if failures.Add(1) <= 3 {
			t.Errorf("%s under load: %v", what, err)
		}
	}
	idTok, err := env.Dex.PasswordToken(ctx, harness.DexClient{ID: oidcClient, Secret: oidcSecret}, alice.Email, alice.Password)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := idTok.Extra("id_token").(string)
	writers := []func(i int){
		func(int) { // logins
			var s proto.Session
			if err := harness.CallAPI(ctx, coord.URL, "POST", "/api/v1/login/token", "", proto.TokenExchangeRequest{IDToken: raw}, &s); err != nil {
				fail("login", err)
				return
			}
			logins.Add(1)
		},
		func(int) { // agent registrations
			if err := harness.CallAPI(ctx, coord.URL, "POST", "/api/v1/agents", cl.JoinToken,
				proto.RegisterAgentRequest{PublicKey: publicKey(t), CSR: agentCSR(t)}, nil); err != nil {
				fail("register", err)
				return
			}
			registrations.Add(1)
		},
		func(i int) { // clusters with an assignment each
			name := fmt.Sprintf("load-%d", i)
			if err := harness.CallAPI(ctx, coord.URL, "POST", "/api/v1/clusters", admTok, proto.CreateClusterRequest{Name: name}, nil); err != nil {
				fail("create cluster", err)
				return
			}
			if err := harness.CallAPI(ctx, coord.URL, "POST", "/api/v1/assignments", admTok,
				proto.Assignment{User: alice.Email, Role: "viewer", Cluster: name}, nil); err != nil {
				fail("assign", err)
				return
			}
			assignments.Add(1)
		},
	}
	var stops []func()
	for _, w := range writers {
		stops = append(stops, testkit.Repeat(t, func(i int) bool { w(i); return true }))
	}
	stopLoad := func() {
		for _, stop := range stops {
			stop()
		}
	}
	// Let the load reach every kind of record, then back up in its midst.
	deadline := time.Now().Add(20 * time.Second)
	for logins.Load() < 5 || registrations.Load() < 5 || assignments.Load() < 5 {
		if time.Now().After(deadline) || failures.Load() > 0 {
			t.Fatalf("load did not start: %d logins, %d registrations, %d assignments", logins.Load(), registrations.Load(), assignments.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	file := filepath.Join(t.TempDir(), "backup.db")
	start := time.Now()
	n0 := logins.Load() + registrations.Load() + assignments.Load()
	outp := adm.must("coordinator", "backup", file)
	took := time.Since(start)
	n1 := logins.Load() + registrations.Load() + assignments.Load()
	// A little more load after the backup, then stop.
	for logins.Load()+registrations.Load()+assignments.Load() < n1+10 && time.Now().Before(deadline.Add(10*time.Second)) {
		time.Sleep(20 * time.Millisecond)
	}
	stopLoad()
	t.Logf("%s(took %v; %d writes during the backup; %d logins, %d registrations, %d assignments in all)",
		outp, took.Round(time.Millisecond), n1-n0, logins.Load(), registrations.Load(), assignments.Load())
	testkit.CheckPerm(t, "backup", file, 0o600)
	after := list(t, adm, coord.URL)

	// Restore as deploy/README.md says: stop the coordinator, put the
	// backup in place of coordinator.db (here: a fresh data directory),
	// start it again at the same URL, which sessions are bound to.
	coord.Stop()
	port, err := strconv.Atoi(coord.URL[strings.LastIndexByte(coord.URL, ':')+1:])
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data", "coordinator.db"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	restored := startCoordinatorOn(t, dir, port)
	// The admin's session is in the backup: it works on the restored
	// coordinator as it is.
	got := list(t, adm, restored.URL)

	for _, c := range []struct {
		what                  string
		before, after, backup []string
	}{
		{"users", before.Users, after.Users, got.Users},
		{"clusters", before.Clusters, after.Clusters, got.Clusters},
		{"roles", before.Roles, after.Roles, got.Roles},
		{"assignments", before.Assignments, after.Assignments, got.Assignments},
	} {
		if m := missing(c.before, c.backup); len(m) > 0 {
			t.Errorf("restored coordinator lacks %s made before the backup: %v", c.what, m)
		}
		if m := missing(c.backup, c.after); len(m) > 0 {
			t.Errorf("restored coordinator has %s the original never had: %v", c.what, m)
		}
	}
	// Load-made clusters and assignments were written in pairs; the
	// snapshot is of one moment, so at most the last pair is half in it.
	if d := len(got.Clusters) - 1 - len(got.Assignments); d < 0 || d > 1 {
		t.Errorf("restored %d load clusters and %d assignments: not one moment's state", len(got.Clusters)-1, len(got.Assignments))
	}
	if len(got.Clusters) <= len(before.Clusters) || len(got.Clusters) >= len(after.Clusters) {
		t.Logf("restored %d clusters; before the load %d, after %d", len(got.Clusters), len(before.Clusters), len(after.Clusters))
	}
	if !slices.Equal(got.Users, []string{admin.Email, alice.Email}) {
		t.Errorf("restored users = %v", got.Users)
	}
	// Alice, assigned on the restored coordinator, can reach its clusters.
	var who proto.Whoami
	var sess proto.Session
	if err := harness.CallAPI(ctx, restored.URL, "POST", "/api/v1/login/token", "", proto.TokenExchangeRequest{IDToken: raw}, &sess); err != nil {
		t.Fatal(err)
	}
	if err := harness.CallAPI(ctx, restored.URL, "GET", "/api/v1/whoami", sess.Token, nil, &who); err != nil {
		t.Fatal(err)
	}
	if len(who.Clusters) != len(got.Assignments) {
		t.Errorf("alice reaches %d clusters on the restored coordinator, has %d assignments", len(who.Clusters), len(got.Assignments))
	}
}
