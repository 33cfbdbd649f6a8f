package deploy

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
)

const (
	agentNS   = "clustral"
	agentSA   = "clustral-agent"
	agentUser = "system:serviceaccount:" + agentNS + ":" + agentSA
	image     = "ghcr.io/clustral/clustral:latest"
)

var (
	installOnce sync.Once
	installErr  error
)

// installAgent installs the agent base into the shared apiserver once, the
// way a user would, checking each step:
//
//  1. A server-side dry run against a fresh apiserver. It creates nothing,
//     so the namespaced objects cannot find the namespace the same apply
//     would create: kube-apiserver answers NotFound for them. That, and
//     only that, is expected; any other error is a broken manifest.
//  2. The namespace is created for real, and the dry run of the whole base
//     must then succeed: every object passes the apiserver's validation
//     and admission.
//  3. The base is applied for real (no controller runs, so no pod is
//     scheduled).
func installAgent(t *testing.T) {
	t.Helper()
	installOnce.Do(func() { installErr = doInstallAgent(t) })
	if installErr != nil {
		t.Fatalf("install the agent base: %v", installErr)
	}
}

// doInstallAgent reports every failure as an error, never through t, so
// that a failure is seen by every test that needs the installation.
func doInstallAgent(t *testing.T) error {
	base := repoPath("deploy", "agent")
	res, err := kubectlRun(t, "apply", "--dry-run=server", "-k", base)
	if err != nil {
		for line := range strings.Lines(strings.TrimSpace(res.Stderr)) {
			if !strings.Contains(line, `namespaces "clustral" not found`) {
				return errors.Join(errors.New("fresh server dry run failed for another reason than the namespace it would create"), err)
			}
		}
	}
	if _, err := kubectlRun(t, "apply", "-f", filepath.Join(base, "base", "namespace.yaml")); err != nil {
		return err
	}
	if _, err := kubectlRun(t, "apply", "--dry-run=server", "-k", base); err != nil {
		return err
	}
	if _, err := kubectlRun(t, "apply", "-k", base); err != nil {
		return err
	}
	return nil
}

func TestAgentServerDryRun(t *testing.T) {
	env.LogOnFailure(t)
	installAgent(t)
	// A second dry run sees every object unchanged or configured, never an
	// error; kubectl diff agrees nothing would change.
	out := kubectl(t, "apply", "--dry-run=server", "-k", repoPath("deploy", "agent"))
	for _, want := range []string{
		"namespace/clustral", "serviceaccount/clustral-agent",
		"clusterrole.rbac.authorization.k8s.io/clustral-agent-impersonator",
		"clusterrolebinding.rbac.authorization.k8s.io/clustral-agent-impersonator",
		"daemonset.apps/clustral-agent",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output lacks %s:\n%s", want, out)
		}
	}
	if res, err := kubectlRun(t, "diff", "-k", repoPath("deploy", "agent")); err != nil {
		t.Errorf("kubectl diff after apply: %v\n%s", err, res.Stdout)
	}
}

// TestAgentManifest checks what the base ships, object by object.
func TestAgentManifest(t *testing.T) {
	objs := parseObjects(t, kustomize(t, repoPath("deploy", "agent")))
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.Kind)
	}
	slices.Sort(kinds)
	// No Secret or ConfigMap: their values are per installation, and a
	// placeholder in the base could end up running.
	want := []string{"ClusterRole", "ClusterRoleBinding", "DaemonSet", "Namespace", "ServiceAccount"}
	if !slices.Equal(kinds, want) {
		t.Fatalf("base kinds = %v, want %v", kinds, want)
	}

	var ns corev1.Namespace
	find(t, objs, "Namespace").decode(t, &ns)
	if ns.Name != agentNS || ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("namespace %s labels %v: want %s enforcing the restricted Pod Security Standard", ns.Name, ns.Labels, agentNS)
	}

	var sa corev1.ServiceAccount
	find(t, objs, "ServiceAccount").decode(t, &sa)
	if sa.Name != agentSA || sa.Namespace != agentNS {
		t.Errorf("service account %s/%s, want %s/%s", sa.Namespace, sa.Name, agentNS, agentSA)
	}

	checkImpersonateOnly(t, objs, agentSA, agentNS)

	var ds appsv1.DaemonSet
	find(t, objs, "DaemonSet").decode(t, &ds)
	checkDaemonSet(t, &ds, baseInstall)
	if got := ds.Spec.Template.Spec.Containers[0].Image; got != image {
		t.Errorf("image = %q, want %q (set by the base's images:)", got, image)
	}
}

// checkImpersonateOnly checks the ClusterRole and ClusterRoleBinding of
// objs against invariant 6 of docs/design.md: the agent's service
// account sa in namespace ns may impersonate users and groups, nothing
// else.
func checkImpersonateOnly(t *testing.T, objs []object, sa, ns string) {
	t.Helper()
	var cr rbacv1.ClusterRole
	find(t, objs, "ClusterRole").decode(t, &cr)
	wantRules := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"users", "groups"}, Verbs: []string{"impersonate"}}}
	if !slices.EqualFunc(cr.Rules, wantRules, ruleEqual) || cr.AggregationRule != nil {
		t.Errorf("ClusterRole %s rules = %+v (aggregation %v), want exactly %+v", cr.Name, cr.Rules, cr.AggregationRule, wantRules)
	}
	var crb rbacv1.ClusterRoleBinding
	find(t, objs, "ClusterRoleBinding").decode(t, &crb)
	wantRef := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: cr.Name}
	wantSubj := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa, Namespace: ns}}
	if crb.RoleRef != wantRef || !slices.Equal(crb.Subjects, wantSubj) {
		t.Errorf("ClusterRoleBinding = %+v %+v, want %+v %+v", crb.RoleRef, crb.Subjects, wantRef, wantSubj)
	}
}

func ruleEqual(a, b rbacv1.PolicyRule) bool {
	return slices.Equal(a.APIGroups, b.APIGroups) && slices.Equal(a.Resources, b.Resources) &&
		slices.Equal(a.Verbs, b.Verbs) && len(a.ResourceNames) == 0 && len(a.NonResourceURLs) == 0
}

// drainTimeout is the --drain-timeout the DaemonSet passes.
func drainTimeout(t *testing.T, c corev1.Container) time.Duration {
	t.Helper()
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--drain-timeout="); ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatalf("--drain-timeout=%q: %v", v, err)
			}
			return d
		}
	}
	return 20 * time.Second // the agent's default
}

// installation names the objects of one installation of the agent: the
// kustomize base's, or a Helm release's.
type installation struct {
	Namespace      string
	DaemonSet      string
	ServiceAccount string
	// TokenSecret and ConfigMap are name prefixes: kustomize's generators
	// append a content hash.
	TokenSecret string
	ConfigMap   string
}

// user is the installation's service account as kube-apiserver names it.
func (in installation) user() string {
	return "system:serviceaccount:" + in.Namespace + ":" + in.ServiceAccount
}

// baseInstall is what deploy/agent installs.
var baseInstall = installation{
	Namespace: agentNS, DaemonSet: "clustral-agent", ServiceAccount: agentSA,
	TokenSecret: "clustral-join-token", ConfigMap: "clustral-agent",
}

// checkDaemonSet asserts the properties every build of the agent must
// keep: least privilege, probes, resources, the join token and
// coordinator URL wiring, and a rolling update that drains.
func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet, in installation) {
	t.Helper()
	if ds.Name != in.DaemonSet || ds.Namespace != in.Namespace {
		t.Errorf("DaemonSet %s/%s, want %s/%s", ds.Namespace, ds.Name, in.Namespace, in.DaemonSet)
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxUnavailable == nil || us.RollingUpdate.MaxUnavailable.String() != "1" {
		t.Errorf("updateStrategy = %+v, want RollingUpdate with maxUnavailable 1", us)
	}
	pod := ds.Spec.Template.Spec
	if pod.ServiceAccountName != in.ServiceAccount {
		t.Errorf("serviceAccountName = %q, want %q", pod.ServiceAccountName, in.ServiceAccount)
	}
	if !ptr.Deref(pod.AutomountServiceAccountToken, false) {
		t.Error("automountServiceAccountToken must be true: the agent authenticates with its token")
	}
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		t.Errorf("host namespaces in use: network %v pid %v ipc %v", pod.HostNetwork, pod.HostPID, pod.HostIPC)
	}
	psc := pod.SecurityContext
	if psc == nil || !ptr.Deref(psc.RunAsNonRoot, false) || ptr.Deref(psc.RunAsUser, 0) != 65532 ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext = %+v, want runAsNonRoot, uid 65532, seccomp RuntimeDefault", psc)
	}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			t.Errorf("volume %s is a hostPath", v.Name)
		}
	}
	if len(pod.InitContainers) != 0 || len(pod.EphemeralContainers) != 0 {
		t.Errorf("unexpected init or ephemeral containers")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "agent" {
		t.Errorf("args = %q, want `agent ...`", c.Args)
	}
	if len(c.Command) != 0 {
		t.Errorf("command = %q: the image's entrypoint is clustral", c.Command)
	}

	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("container has no securityContext")
	case !ptr.Deref(sc.ReadOnlyRootFilesystem, false):
		t.Error("readOnlyRootFilesystem must be true")
	case !ptr.Deref(sc.RunAsNonRoot, false) || ptr.Deref(sc.RunAsUser, 0) != 65532:
		t.Errorf("container runAsNonRoot %v runAsUser %v, want true 65532", sc.RunAsNonRoot, sc.RunAsUser)
	case ptr.Deref(sc.AllowPrivilegeEscalation, true):
		t.Error("allowPrivilegeEscalation must be false")
	case ptr.Deref(sc.Privileged, false):
		t.Error("privileged must not be set")
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0:
		t.Errorf("capabilities = %+v, want drop [ALL] and no add", sc.Capabilities)
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("container seccompProfile = %+v, want RuntimeDefault", sc.SeccompProfile)
	}

	// No inbound port is needed; the only port is the health endpoint,
	// never on the host.
	var healthPort int32
	for _, p := range c.Ports {
		if p.HostPort != 0 {
			t.Errorf("port %s uses hostPort %d", p.Name, p.HostPort)
		}
		if p.Name == "health" {
			healthPort = p.ContainerPort
		}
	}
	if healthPort != 8080 || !slices.Contains(c.Args, "--health-listen=:8080") {
		t.Errorf("health port %d, args %q: want 8080 and --health-listen=:8080", healthPort, c.Args)
	}
	probes := []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"startup", c.StartupProbe, "/healthz"},
		{"liveness", c.LivenessProbe, "/healthz"},
		{"readiness", c.ReadinessProbe, "/readyz"},
	}
	for _, p := range probes {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe missing or not HTTP", p.name)
			continue
		}
		g := p.probe.HTTPGet
		if g.Path != p.path || (g.Port.String() != "health" && g.Port.IntValue() != 8080) {
			t.Errorf("%s probe = %s on port %s, want %s on the health port", p.name, g.Path, g.Port.String(), p.path)
		}
	}
	if p := c.StartupProbe; p != nil && time.Duration(p.PeriodSeconds*p.FailureThreshold)*time.Second < 60*time.Second {
		t.Errorf("startup probe allows %ds, want at least 60s for registration retries", p.PeriodSeconds*p.FailureThreshold)
	}

	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, lim := c.Resources.Requests[name], c.Resources.Limits[name]
		if req.IsZero() || lim.IsZero() || req.Cmp(lim) > 0 {
			t.Errorf("%s request %s limit %s: want both set, request <= limit", name, req.String(), lim.String())
		}
	}
	if lim := c.Resources.Limits[corev1.ResourceMemory]; lim.Cmp(resource.MustParse("128Mi")) < 0 {
		t.Errorf("memory limit %s is too small for the tunnel's buffers", lim.String())
	}

	grace := time.Duration(ptr.Deref(pod.TerminationGracePeriodSeconds, 30)) * time.Second
	if drain := drainTimeout(t, c); grace < drain+10*time.Second {
		t.Errorf("terminationGracePeriodSeconds %v < drain timeout %v + 10s margin", grace, drain)
	}

	// The coordinator URL comes from the ConfigMap, never a literal.
	var coord *corev1.EnvVar
	for i, e := range c.Env {
		if e.Name == "CLUSTRAL_COORDINATOR" {
			coord = &c.Env[i]
		}
		if e.Name == "CLUSTRAL_JOIN_TOKEN" {
			t.Error("the join token must come from a file, not the environment")
		}
	}
	if coord == nil || coord.ValueFrom == nil || coord.ValueFrom.ConfigMapKeyRef == nil ||
		!strings.HasPrefix(coord.ValueFrom.ConfigMapKeyRef.Name, in.ConfigMap) ||
		coord.ValueFrom.ConfigMapKeyRef.Key != "coordinator-url" || ptr.Deref(coord.ValueFrom.ConfigMapKeyRef.Optional, false) {
		t.Errorf("CLUSTRAL_COORDINATOR = %+v, want a required configMapKeyRef %s/coordinator-url", coord, in.ConfigMap)
	}

	// The join token: --join-token-file points into a read-only mount of
	// key "token" of the join token Secret, readable by uid 65532.
	var tokenFile string
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--join-token-file="); ok {
			tokenFile = v
		}
	}
	if tokenFile == "" {
		t.Fatalf("no --join-token-file in args %q", c.Args)
	}
	found := false
	for _, m := range c.VolumeMounts {
		rel, err := filepath.Rel(m.MountPath, tokenFile)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			found = true
			if !strings.HasPrefix(v.Secret.SecretName, in.TokenSecret) || ptr.Deref(v.Secret.Optional, false) {
				t.Errorf("token volume secret %q (optional %v), want required %s", v.Secret.SecretName, v.Secret.Optional, in.TokenSecret)
			}
			if !m.ReadOnly {
				t.Error("join token mount must be read-only")
			}
			if !slices.ContainsFunc(v.Secret.Items, func(k corev1.KeyToPath) bool { return k.Key == "token" && k.Path == rel }) {
				t.Errorf("secret items %+v do not map key token to %s", v.Secret.Items, rel)
			}
			// Secret files belong to root; the agent reads the token
			// through fsGroup, and nobody else may.
			mode := ptr.Deref(v.Secret.DefaultMode, 0o644)
			if mode&0o007 != 0 || mode&0o040 == 0 || psc == nil || ptr.Deref(psc.FSGroup, 0) != 65532 {
				t.Errorf("token file mode %#o with fsGroup 65532 = %v: want group-readable, not world-readable", mode, psc != nil && ptr.Deref(psc.FSGroup, 0) == 65532)
			}
		}
	}
	if !found {
		t.Errorf("--join-token-file=%s is not inside a Secret volume mount", tokenFile)
	}
}

// TestAgentPodAdmission creates the agent's pod (dry run) in its namespace,
// which enforces the restricted Pod Security Standard, and shows that
// enforcement is on by having a pod with NET_ADMIN refused.
func TestAgentPodAdmission(t *testing.T) {
	env.LogOnFailure(t)
	installAgent(t)
	var ds appsv1.DaemonSet
	find(t, parseObjects(t, kustomize(t, repoPath("deploy", "agent"))), "DaemonSet").decode(t, &ds)
	c := env.APIServer.Client()
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "clustral-agent-admission", Namespace: agentNS, Labels: ds.Spec.Template.Labels},
		Spec:       ds.Spec.Template.Spec,
	}
	if _, err := c.CoreV1().Pods(agentNS).Create(t.Context(), pod, dry); err != nil {
		t.Fatalf("the agent's pod is not admitted: %v", err)
	}

	bad := pod.DeepCopy()
	bad.Spec.Containers[0].SecurityContext.AllowPrivilegeEscalation = ptr.To(true)
	bad.Spec.Containers[0].SecurityContext.Capabilities.Add = []corev1.Capability{"NET_ADMIN"}
	_, err := c.CoreV1().Pods(agentNS).Create(t.Context(), bad, dry)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "PodSecurity") {
		t.Fatalf("pod with NET_ADMIN in %s: err = %v, want a PodSecurity refusal", agentNS, err)
	}
}

// TestAgentRBAC has kube-apiserver judge the applied RBAC: the agent's
// service account may impersonate users and groups, and nothing else.
func TestAgentRBAC(t *testing.T) {
	env.LogOnFailure(t)
	installAgent(t)
	checkRBAC(t, baseInstall)
}

// TestAgentToken uses a real token of the agent's service account, as the
// pod would, against kube-apiserver.
func TestAgentToken(t *testing.T) {
	env.LogOnFailure(t)
	installAgent(t)
	checkToken(t, baseInstall)
}

// checkToken requests a token of the installation's service account and
// uses it: as itself it may read nothing, impersonating users and groups
// works, impersonating anything else is forbidden.
func checkToken(t *testing.T, in installation) {
	t.Helper()
	tr, err := env.APIServer.Client().CoreV1().ServiceAccounts(in.Namespace).CreateToken(t.Context(), in.ServiceAccount,
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s: %v", in.user(), err)
	}
	client := func(imp rest.ImpersonationConfig) *kubernetes.Clientset {
		cfg := env.APIServer.ConfigFor(tr.Status.Token)
		cfg.Impersonate = imp
		return kubernetes.NewForConfigOrDie(cfg)
	}

	t.Run("as itself", func(t *testing.T) {
		c := client(rest.ImpersonationConfig{})
		who, err := c.AuthenticationV1().SelfSubjectReviews().Create(t.Context(), &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil || who.Status.UserInfo.Username != in.user() {
			t.Fatalf("whoami = %+v, %v; want %s", who, err, in.user())
		}
		if _, err := c.CoreV1().Pods("").List(t.Context(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("list pods: err = %v, want Forbidden", err)
		}
		if _, err := c.CoreV1().Secrets(in.Namespace).Get(t.Context(), in.TokenSecret, metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("get secret: err = %v, want Forbidden", err)
		}
	})

	t.Run("impersonating a user and groups", func(t *testing.T) {
		c := client(rest.ImpersonationConfig{UserName: "alice@example.com", Groups: []string{"clustral:viewers", "dev"}})
		who, err := c.AuthenticationV1().SelfSubjectReviews().Create(t.Context(), &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("whoami impersonating alice: %v", err)
		}
		u := who.Status.UserInfo
		if u.Username != "alice@example.com" || !slices.Contains(u.Groups, "clustral:viewers") || !slices.Contains(u.Groups, "dev") {
			t.Errorf("impersonated identity = %+v, want alice@example.com in clustral:viewers and dev", u)
		}
	})

	denied := []struct {
		name string
		imp  rest.ImpersonationConfig
	}{
		{"a service account", rest.ImpersonationConfig{UserName: "system:serviceaccount:kube-system:default"}},
		{"a uid", rest.ImpersonationConfig{UserName: "alice@example.com", UID: "1234"}},
		{"user extras", rest.ImpersonationConfig{UserName: "alice@example.com", Extra: map[string][]string{"scopes": {"admin"}}}},
	}
	for _, d := range denied {
		t.Run("impersonating "+d.name, func(t *testing.T) {
			_, err := client(d.imp).AuthenticationV1().SelfSubjectReviews().Create(t.Context(), &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
			if !apierrors.IsForbidden(err) {
				t.Errorf("err = %v, want Forbidden", err)
			}
		})
	}
}

// TestAgentOverlay builds an installation the way deploy/README.md
// describes: the example overlay with a join token file, plus both
// components, and has kube-apiserver dry-run it.
func TestAgentOverlay(t *testing.T) {
	env.LogOnFailure(t)
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(repoPath("deploy", "agent"))); err != nil {
		t.Fatal(err)
	}
	example := filepath.Join(dir, "overlays", "example")
	for _, f := range []string{"join-token", "ca.crt"} { // a developer's local files
		os.Remove(filepath.Join(example, f))
	}

	// Without the token file the overlay does not build: its example
	// values can never be applied by mistake.
	if res, err := harnessKubectl().Run(t.Context(), "kustomize", example); err == nil || !strings.Contains(res.Stderr, "join-token") {
		t.Fatalf("example overlay built without a join-token file (err %v):\n%s", err, res.Stdout)
	}

	const token = "cjt_0123456789abcdefghijklmnopqrstuv"
	const caPEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	write(t, filepath.Join(example, "join-token"), token+"\n")
	test := filepath.Join(dir, "overlays", "test")
	write(t, filepath.Join(test, "ca.crt"), caPEM)
	write(t, filepath.Join(test, "kustomization.yaml"), `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../example
components:
  - ../../components/tolerate-control-plane
  - ../../components/coordinator-ca
images:
  - name: ghcr.io/clustral/clustral
    newTag: v1.2.3
configMapGenerator:
  - name: clustral-agent
    namespace: clustral
    behavior: merge
    files: [ca.crt]
`)
	manifest := kustomize(t, test)
	objs := parseObjects(t, manifest)

	var secret corev1.Secret
	find(t, objs, "Secret").decode(t, &secret)
	if got := strings.TrimSpace(string(secret.Data["token"])); got != token || secret.Namespace != agentNS {
		t.Errorf("secret %s/%s token = %q, want %q", secret.Namespace, secret.Name, got, token)
	}
	var cm corev1.ConfigMap
	find(t, objs, "ConfigMap").decode(t, &cm)
	if cm.Data["coordinator-url"] != "https://clustral.example.com" || cm.Data["ca.crt"] != caPEM {
		t.Errorf("configmap data = %q", cm.Data)
	}

	var ds appsv1.DaemonSet
	find(t, objs, "DaemonSet").decode(t, &ds)
	checkDaemonSet(t, &ds, baseInstall)
	pod := ds.Spec.Template.Spec
	c := pod.Containers[0]
	if c.Image != "ghcr.io/clustral/clustral:v1.2.3" {
		t.Errorf("image = %q, want the overlay's tag", c.Image)
	}
	// Generated names carry a content hash; every reference must follow.
	refs := map[string]bool{}
	for _, v := range pod.Volumes {
		if v.Secret != nil {
			refs[v.Secret.SecretName] = true
		}
		if v.ConfigMap != nil {
			refs[v.ConfigMap.Name] = true
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
			refs[e.ValueFrom.ConfigMapKeyRef.Name] = true
		}
	}
	if len(refs) != 2 || !refs[secret.Name] || !refs[cm.Name] || secret.Name == "clustral-join-token" {
		t.Errorf("DaemonSet references %v, want exactly the hashed %s and %s", refs, secret.Name, cm.Name)
	}
	wantTol := corev1.Toleration{Key: "node-role.kubernetes.io/control-plane", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}
	if !slices.Contains(pod.Tolerations, wantTol) {
		t.Errorf("tolerations = %+v, want %+v", pod.Tolerations, wantTol)
	}
	if !slices.Contains(c.Env, corev1.EnvVar{Name: "CLUSTRAL_CA_FILE", Value: "/etc/clustral-ca/ca.crt"}) ||
		!slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/etc/clustral-ca" && m.ReadOnly }) {
		t.Errorf("coordinator CA not wired: env %+v mounts %+v", c.Env, c.VolumeMounts)
	}

	installAgent(t)
	k := kubectlRunner(t)
	if res, err := k.Run(t.Context(), "apply", "--dry-run=server", "-k", test); err != nil {
		t.Fatalf("server dry run of the overlay: %v\n%s", err, res.Stdout)
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestAgentFlags checks that the DaemonSet passes only flags and
// CLUSTRAL_* variables that `clustral agent` has.
func TestAgentFlags(t *testing.T) {
	var ds appsv1.DaemonSet
	find(t, parseObjects(t, kustomize(t, repoPath("deploy", "agent"))), "DaemonSet").decode(t, &ds)
	checkFlags(t, ds.Spec.Template.Spec.Containers[0])
}

// checkFlags checks that the agent's container passes only flags and
// CLUSTRAL_* variables that `clustral agent` has.
func checkFlags(t *testing.T, c corev1.Container) {
	t.Helper()
	local, _ := helpFlags(t, "agent")
	for _, a := range c.Args[1:] {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !local[name] {
			t.Errorf("arg %q is not a flag of `clustral agent`", a)
		}
	}
	for _, e := range c.Env {
		rest, ok := strings.CutPrefix(e.Name, "CLUSTRAL_")
		if !ok {
			continue
		}
		if name := strings.ToLower(strings.ReplaceAll(rest, "_", "-")); !local[name] {
			t.Errorf("env %s names no flag of `clustral agent` (--%s)", e.Name, name)
		}
	}
	for _, want := range []string{"coordinator", "join-token-file", "health-listen", "drain-timeout", "ca-file"} {
		if !local[want] {
			t.Errorf("`clustral agent` has no --%s, which deploy/agent relies on", want)
		}
	}
}
