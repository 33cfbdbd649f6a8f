package deploy

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

const haNS = "clustral-coordinator"

// haManifest is deploy/coordinator/kubernetes rendered, decoded strictly.
type haManifest struct {
	sts      appsv1.StatefulSet
	services map[string]corev1.Service
	pdb      policyv1.PodDisruptionBudget
	policy   networkingv1.NetworkPolicy
	config   map[string]any // the ConfigMap's coordinator.yaml
	kinds    []string
}

func renderHA(t *testing.T) haManifest {
	t.Helper()
	m := haManifest{services: map[string]corev1.Service{}}
	for _, o := range parseObjects(t, kustomize(t, repoPath("deploy", "coordinator", "kubernetes"))) {
		m.kinds = append(m.kinds, o.Kind)
		switch o.Kind {
		case "StatefulSet":
			o.decode(t, &m.sts)
		case "Service":
			var s corev1.Service
			o.decode(t, &s)
			m.services[s.Name] = s
		case "PodDisruptionBudget":
			o.decode(t, &m.pdb)
		case "NetworkPolicy":
			o.decode(t, &m.policy)
		case "ConfigMap":
			var cm corev1.ConfigMap
			o.decode(t, &cm)
			if err := yaml.UnmarshalStrict([]byte(cm.Data["coordinator.yaml"]), &m.config); err != nil {
				t.Fatalf("ConfigMap %s: coordinator.yaml: %v", cm.Name, err)
			}
			if cm.Name == "clustral-coordinator" {
				t.Errorf("ConfigMap name %q has no content hash: a config change would not roll the replicas", cm.Name)
			}
		}
		if o.Kind != "Namespace" && o.Namespace != haNS {
			t.Errorf("%s %s is in namespace %q, want %s", o.Kind, o.Name, o.Namespace, haNS)
		}
	}
	return m
}

// configPort returns the port number of the address a config key holds
// (":8443", "host:7947").
func configPort(t *testing.T, config map[string]any, key string) int32 {
	t.Helper()
	v, _ := config[key].(string)
	i := strings.LastIndex(v, ":")
	n, err := strconv.Atoi(v[i+1:])
	if i < 0 || err != nil {
		t.Fatalf("coordinator.yaml %s = %q: not an address with a port", key, v)
	}
	return int32(n)
}

// TestCoordinatorKubernetesManifest checks what the HA setup ships
// against the configuration it mounts: three replicas on etcd, spread
// over nodes, each advertising its own pod address for relay links, the
// ports the file listens on, a Secret mounted at every path the file
// names, and a load balancer that keeps clients' source addresses.
func TestCoordinatorKubernetesManifest(t *testing.T) {
	m := renderHA(t)
	cfg := m.config
	if cfg["store"] != "etcd" {
		t.Errorf("store = %v, want etcd: replicas share their state through it", cfg["store"])
	}
	sts := m.sts
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 3 {
		t.Errorf("replicas = %v, want 3", sts.Spec.Replicas)
	}
	if len(sts.Spec.Template.Spec.TopologySpreadConstraints) == 0 {
		t.Error("no topology spread: all replicas may land on one node")
	}
	if _, ok := m.services[sts.Spec.ServiceName]; !ok {
		t.Errorf("serviceName %q is not a Service of the manifest", sts.Spec.ServiceName)
	}
	pod := sts.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]

	// Ports: what the file listens on is what the container declares.
	ports := map[string]corev1.ContainerPort{}
	for _, p := range c.Ports {
		ports[p.Name] = p
	}
	for _, tt := range []struct {
		key, port string
		proto     corev1.Protocol
	}{
		{"listen", "https", corev1.ProtocolTCP},
		{"stun-listen", "stun", corev1.ProtocolUDP},
		{"replica-listen", "replica", corev1.ProtocolTCP},
		{"metrics-listen", "metrics", corev1.ProtocolTCP},
	} {
		p, ok := ports[tt.port]
		if want := configPort(t, cfg, tt.key); !ok || p.ContainerPort != want || p.Protocol != tt.proto {
			t.Errorf("container port %s = %+v, want %d/%s as coordinator.yaml's %s", tt.port, p, want, tt.proto, tt.key)
		}
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.String() != "metrics" {
		t.Errorf("readiness probe = %+v, want GET /readyz on the metrics port", p)
	}

	// Each replica advertises its own pod address, never a shared name.
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if e := env["POD_IP"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "status.podIP" {
		t.Errorf("POD_IP = %+v, want the downward API's status.podIP", e)
	}
	if e := env["CLUSTRAL_REPLICA_ADVERTISE"]; e.Value != "$(POD_IP):"+strconv.Itoa(int(configPort(t, cfg, "replica-listen"))) {
		t.Errorf("CLUSTRAL_REPLICA_ADVERTISE = %q, want $(POD_IP) and the replica-listen port", e.Value)
	}
	if _, ok := cfg["replica-advertise"]; ok {
		t.Error("coordinator.yaml sets replica-advertise: it is per replica, from the environment")
	}

	// Every file the configuration names is mounted, read-only.
	mounted := func(path string) bool {
		for _, vm := range c.VolumeMounts {
			if vm.ReadOnly && (path == vm.MountPath || strings.HasPrefix(path, vm.MountPath+"/")) {
				return true
			}
		}
		return false
	}
	for _, key := range []string{"tls-cert", "tls-key", "oidc-client-secret-file", "etcd-cert", "etcd-key", "etcd-ca"} {
		if p, _ := cfg[key].(string); p == "" || !mounted(p) {
			t.Errorf("coordinator.yaml %s = %q is not under a read-only mount", key, p)
		}
	}
	if key := filepath.Join(cfg["data-dir"].(string), "audit-checkpoint.key"); !mounted(key) {
		t.Errorf("%s is not mounted from a Secret: each replica would sign checkpoints with its own key", key)
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("container security context = %+v, want a read-only root and no privilege escalation", sc)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the service account token is mounted; the coordinator calls no Kubernetes API")
	}

	// The front door keeps source addresses and carries both protocols.
	lb, ok := m.services["clustral-coordinator"]
	if !ok || lb.Spec.Type != corev1.ServiceTypeLoadBalancer || lb.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
		t.Errorf("front door = %+v, want a LoadBalancer with externalTrafficPolicy Local", lb.Spec)
	}
	lbPorts := map[string]corev1.ServicePort{}
	for _, p := range lb.Spec.Ports {
		lbPorts[p.Name] = p
	}
	if p := lbPorts["https"]; p.Protocol != corev1.ProtocolTCP || p.TargetPort.String() != "https" {
		t.Errorf("front door https port = %+v", p)
	}
	if p := lbPorts["stun"]; p.Protocol != corev1.ProtocolUDP || p.TargetPort.String() != "stun" {
		t.Errorf("front door stun port = %+v, want UDP to the discovery port", p)
	}
	if _, ok := lbPorts["replica"]; ok {
		t.Error("the load balancer exposes the relay link port; only replicas may reach it")
	}

	if m.pdb.Spec.MaxUnavailable == nil || m.pdb.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("PodDisruptionBudget maxUnavailable = %v, want 1", m.pdb.Spec.MaxUnavailable)
	}
	// Only coordinator pods reach the relay link port.
	for _, rule := range m.policy.Spec.Ingress {
		for _, p := range rule.Ports {
			if p.Port == nil || p.Port.String() != "replica" {
				continue
			}
			if len(rule.From) != 1 || rule.From[0].PodSelector == nil || rule.From[0].NamespaceSelector != nil ||
				rule.From[0].PodSelector.MatchLabels["app.kubernetes.io/name"] != "clustral-coordinator" {
				t.Errorf("network policy opens the replica port to %+v, want only coordinator pods", rule.From)
			}
		}
	}
}

// TestCoordinatorKubernetesServerDryRun applies the setup to a real
// apiserver as a server-side dry run, after creating its namespace:
// every object passes validation and admission, and no object breaks
// the restricted Pod Security level its namespace enforces.
func TestCoordinatorKubernetesServerDryRun(t *testing.T) {
	env.LogOnFailure(t)
	dir := repoPath("deploy", "coordinator", "kubernetes")
	kubectl(t, "apply", "-f", filepath.Join(dir, "namespace.yaml"))
	res, err := kubectlRun(t, "apply", "--dry-run=server", "-k", dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"statefulset.apps/clustral-coordinator", "service/clustral-coordinator",
		"service/clustral-coordinator-replicas", "poddisruptionbudget.policy/clustral-coordinator",
		"networkpolicy.networking.k8s.io/clustral-coordinator"} {
		if !strings.Contains(res.Stdout, want) {
			t.Errorf("dry run output lacks %s:\n%s", want, res.Stdout)
		}
	}
	if strings.Contains(res.Stderr, "PodSecurity") {
		t.Errorf("the pod template breaks the namespace's Pod Security level:\n%s", res.Stderr)
	}
}

// TestCoordinatorKubernetesConfigLoads has the real binary read the HA
// configuration as a replica would, with its environment and the OIDC
// secret present: every key is accepted, and it stops only at the first
// file the pod would have from a Secret.
func TestCoordinatorKubernetesConfigLoads(t *testing.T) {
	if _, err := os.Stat("/etc/clustral"); err == nil {
		t.Skip("/etc/clustral exists on this machine: the mounted paths would not be missing")
	}
	secret := filepath.Join(t.TempDir(), "client-secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	configLoadsUntil(t, repoPath("deploy", "coordinator", "kubernetes", "coordinator.yaml"), "/etc/clustral/etcd/tls.crt",
		[]string{"CLUSTRAL_REPLICA_ADVERTISE=10.0.0.11:7947"}, "--oidc-client-secret-file", secret)
}

// TestCoordinatorKubernetesConfigKeys: every key of the HA configuration
// is a flag of `clustral coordinator`.
func TestCoordinatorKubernetesConfigKeys(t *testing.T) {
	local, global := helpFlags(t, "coordinator")
	_, documented := configKeys(t, repoPath("deploy", "coordinator", "kubernetes", "coordinator.yaml"))
	for k := range documented {
		if !local[k] && !global[k] {
			t.Errorf("kubernetes/coordinator.yaml key %q is not a flag of `clustral coordinator`", k)
		}
	}
}
