package deploy

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/clustral/clustral/integration/harness"
)

// The chart's tests install a release named edge into its own namespace,
// beside the kustomize base, so that neither's RBAC answers for the other.
const (
	chartRelease = "edge"
	chartNS      = "clustral-edge"
	chartToken   = "cjt_0123456789abcdefghijklmnopqrstuvwxyzABCDEF"
	chartURL     = "https://clustral.example.com"
)

// chartInstall is what the edge release installs: every name is the
// release's fullname, <release>-clustral-agent.
var chartInstall = installation{
	Namespace: chartNS, DaemonSet: "edge-clustral-agent", ServiceAccount: "edge-clustral-agent",
	TokenSecret: "edge-clustral-agent-join-token", ConfigMap: "edge-clustral-agent",
}

func chartDir() string { return repoPath("deploy", "helm", "clustral-agent") }

// helmFor is helm with its own configuration, as the apiserver's admin.
func helmFor(t *testing.T) harness.Helm {
	t.Helper()
	return harness.Helm{Dir: t.TempDir(), Kubeconfig: env.APIServer.Kubeconfig}
}

// chartValues are the values every installation must give: the
// coordinator's URL and the join token.
func chartValues() []string {
	return []string{"--set", "coordinator.url=" + chartURL, "--set", "joinToken.value=" + chartToken}
}

// renderChart runs `helm template` for a release of the chart in ns with
// the given flags, failing t on error.
func renderChart(t *testing.T, release, ns string, flags ...string) []object {
	t.Helper()
	args := append([]string{"template", release, chartDir(), "--namespace", ns}, flags...)
	res, err := helmFor(t).Run(t.Context(), args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, res.Stderr)
	}
	return parseObjects(t, []byte(res.Stdout))
}

func chartDaemonSet(t *testing.T, objs []object) *appsv1.DaemonSet {
	t.Helper()
	var ds appsv1.DaemonSet
	find(t, objs, "DaemonSet").decode(t, &ds)
	return &ds
}

// TestChartLint runs helm lint, strict, with the values an installation
// gives, and with the optional values set too.
func TestChartLint(t *testing.T) {
	tests := []struct {
		name  string
		flags []string
	}{
		{"required values", chartValues()},
		{"existing secret", []string{"--set", "coordinator.url=" + chartURL, "--set", "joinToken.existingSecret=clustral-join-token"}},
		{"every value", append(chartValues(),
			"--set-file", "coordinator.caCert="+writeTemp(t, "ca.crt", testCAPEM),
			"--set", "image.tag=v1.2.3", "--set", "image.pullPolicy=IfNotPresent",
			"--set", "logFormat=text", "--set", "logLevel=debug", "--set", "healthPort=9090",
			"--set", "drainTimeoutSeconds=30", "--set", "extraArgs={--rate-limit-qps=20}",
			"--set", "priorityClassName=system-cluster-critical",
			"--set-json", `tolerations=[{"key":"node-role.kubernetes.io/control-plane","operator":"Exists","effect":"NoSchedule"}]`,
		)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"lint", "--strict", chartDir()}, tt.flags...)
			res, err := helmFor(t).Run(t.Context(), args...)
			if err != nil || !strings.Contains(res.Stdout, "1 chart(s) linted, 0 chart(s) failed") {
				t.Fatalf("helm lint: %v\n%s%s", err, res.Stdout, res.Stderr)
			}
		})
	}
}

const testCAPEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	write(t, p, content)
	return p
}

// TestChartValuesRefused: values that cannot make a working, locked-down
// agent fail the render with a message naming the value to fix.
func TestChartValuesRefused(t *testing.T) {
	url := []string{"--set", "coordinator.url=" + chartURL}
	tok := []string{"--set", "joinToken.value=" + chartToken}
	tests := []struct {
		name  string
		flags []string
		want  string
	}{
		{"no values", nil, "joinToken: the agent needs the cluster's join token: --set-file joinToken.value="},
		{"no token", url, "--set joinToken.existingSecret="},
		{"no coordinator", tok, "coordinator.url is required: --set coordinator.url=https://"},
		{"token and existing secret", append(chartValues(), "--set", "joinToken.existingSecret=mine"), "set either joinToken.existingSecret"},
		{"not a token", append(url, "--set", "joinToken.value=hunter2"), "joinToken.value is not a join token (they start with cjt_)"},
		{"plain http coordinator", append(tok, "--set", "coordinator.url=http://clustral.example.com"), `coordinator.url "http://clustral.example.com" is not an https:// URL`},
		{"coordinator without scheme", append(tok, "--set", "coordinator.url=clustral.example.com"), "is not an https:// URL"},
		{"numeric image tag", append(chartValues(), "-f", writeTemp(t, "values.yaml", "image:\n  tag: 1.10\n")), "image.tag 1.1 is a number"},
		{"log format", append(chartValues(), "--set", "logFormat=xml"), `logFormat "xml": use json or text`},
		{"log level", append(chartValues(), "--set", "logLevel=trace"), `logLevel "trace": use debug, info, warn or error`},
		{"health port", append(chartValues(), "--set", "healthPort=70000"), "healthPort 70000: use a port between 1 and 65535"},
		{"drain timeout", append(chartValues(), "--set", "drainTimeoutSeconds=0"), "drainTimeoutSeconds 0"},
		{"arg not a flag", append(chartValues(), "--set", "extraArgs={verbose}"), `extraArgs: "verbose" is not a flag`},
		{"token in args", append(chartValues(), "--set", "extraArgs={--join-token=cjt_x}"), "extraArgs: --join-token=cjt_x is refused: set joinToken.value or joinToken.existingSecret"},
		{"token file in args", append(chartValues(), "--set", "extraArgs={--join-token-file=/tmp/t}"), "is refused: set joinToken.value"},
		{"insecure", append(chartValues(), "--set", "extraArgs={--insecure}"), "extraArgs: --insecure is refused: the agent reaches the coordinator over https only"},
		{"kubeconfig", append(chartValues(), "--set", "extraArgs={--kubeconfig=/k}"), "is refused: the agent uses its service account"},
		{"second coordinator", append(chartValues(), "--set", "extraArgs={--coordinator=https://other.example.com}"), "is refused: set coordinator.url"},
		{"audit dir", append(chartValues(), "--set", "extraArgs={--audit-dir=/tmp/a}"), "is refused: the spool lives on the pod's state volume"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"template", chartRelease, chartDir(), "--namespace", chartNS}, tt.flags...)
			res, err := helmFor(t).Run(t.Context(), args...)
			if err == nil {
				t.Fatalf("helm template succeeded, want an error containing %q", tt.want)
			}
			if !strings.Contains(res.Stderr, tt.want) {
				t.Errorf("helm template error:\n%s\nwant it to contain %q", res.Stderr, tt.want)
			}
		})
	}
}

// TestChartManifest checks what the chart renders, object by object.
func TestChartManifest(t *testing.T) {
	tokenFile := writeTemp(t, "join-token", chartToken+"\n") // as `clustral clusters add ... > join-token` writes it
	objs := renderChart(t, chartRelease, chartNS, "--set", "coordinator.url="+chartURL, "--set-file", "joinToken.value="+tokenFile)
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.Kind)
		if o.Kind != "ClusterRole" && o.Kind != "ClusterRoleBinding" && o.Namespace != chartNS {
			t.Errorf("%s %s in namespace %q, want the release's %q", o.Kind, o.Name, o.Namespace, chartNS)
		}
	}
	slices.Sort(kinds)
	// No Namespace: helm stores the release in it before creating the
	// chart's objects, so it must exist first.
	want := []string{"ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "Secret", "ServiceAccount"}
	if !slices.Equal(kinds, want) {
		t.Fatalf("chart kinds = %v, want %v", kinds, want)
	}

	var secret corev1.Secret
	find(t, objs, "Secret").decode(t, &secret)
	if secret.Name != chartInstall.TokenSecret || string(secret.Data["token"]) != chartToken || len(secret.Data) != 1 {
		t.Errorf("secret %s data %q, want %s with token %q and no newline", secret.Name, secret.Data, chartInstall.TokenSecret, chartToken)
	}
	var cm corev1.ConfigMap
	find(t, objs, "ConfigMap").decode(t, &cm)
	if cm.Name != chartInstall.ConfigMap || !equality.Semantic.DeepEqual(cm.Data, map[string]string{"coordinator-url": chartURL}) {
		t.Errorf("configmap %s data %q, want %s with coordinator-url %s", cm.Name, cm.Data, chartInstall.ConfigMap, chartURL)
	}
	var sa corev1.ServiceAccount
	find(t, objs, "ServiceAccount").decode(t, &sa)
	if sa.Name != chartInstall.ServiceAccount {
		t.Errorf("service account %s, want %s", sa.Name, chartInstall.ServiceAccount)
	}
	checkImpersonateOnly(t, objs, chartInstall.ServiceAccount, chartNS)

	ds := chartDaemonSet(t, objs)
	checkDaemonSet(t, ds, chartInstall)
	if got, want := ds.Spec.Template.Spec.Containers[0].Image, "ghcr.io/clustral/clustral:latest"; got != want {
		t.Errorf("image = %q, want %q (the chart's appVersion)", got, want)
	}
	// Selector labels must not change between releases of the chart:
	// a DaemonSet's selector is immutable.
	wantSel := map[string]string{"app.kubernetes.io/name": "clustral-agent", "app.kubernetes.io/instance": chartRelease}
	if !equality.Semantic.DeepEqual(ds.Spec.Selector.MatchLabels, wantSel) {
		t.Errorf("selector = %v, want %v", ds.Spec.Selector.MatchLabels, wantSel)
	}

	// A new token rolls the agents; the same values render the same pod.
	checksum := func(flags ...string) string {
		return chartDaemonSet(t, renderChart(t, chartRelease, chartNS, flags...)).Spec.Template.Annotations["checksum/config"]
	}
	a, b := checksum(chartValues()...), checksum(chartValues()...)
	c := checksum("--set", "coordinator.url="+chartURL, "--set", "joinToken.value=cjt_another")
	d := checksum("--set", "coordinator.url=https://other.example.com", "--set", "joinToken.value="+chartToken)
	if a == "" || a != b || a == c || a == d {
		t.Errorf("pod checksum: same values %q and %q, new token %q, new URL %q: want equal, then different", a, b, c, d)
	}
}

// TestChartValues sets each value and checks where it lands. Every
// rendering keeps the base's hardening (checkDaemonSet), unless the value
// changes what checkDaemonSet pins.
func TestChartValues(t *testing.T) {
	tests := []struct {
		name  string
		flags []string
		check func(t *testing.T, objs []object, ds *appsv1.DaemonSet, c corev1.Container)
		// moved is set when the value changes what checkDaemonSet pins.
		moved bool
	}{
		{"existing secret", []string{"--set", "coordinator.url=" + chartURL, "--set", "joinToken.existingSecret=my-token", "--set", "joinToken.existingSecretKey=jt"},
			func(t *testing.T, objs []object, ds *appsv1.DaemonSet, c corev1.Container) {
				if slices.ContainsFunc(objs, func(o object) bool { return o.Kind == "Secret" }) {
					t.Error("the chart renders a Secret next to an existing one")
				}
				v := ds.Spec.Template.Spec.Volumes[0]
				want := []corev1.KeyToPath{{Key: "jt", Path: "join-token"}}
				if v.Secret == nil || v.Secret.SecretName != "my-token" || !slices.Equal(v.Secret.Items, want) {
					t.Errorf("token volume = %+v, want secret my-token key jt", v.VolumeSource)
				}
			}, true},
		{"coordinator CA", append(chartValues(), "--set-file", "coordinator.caCert="+writeTemp(t, "ca.crt", testCAPEM)),
			func(t *testing.T, objs []object, ds *appsv1.DaemonSet, c corev1.Container) {
				var cm corev1.ConfigMap
				find(t, objs, "ConfigMap").decode(t, &cm)
				if cm.Data["ca.crt"] != testCAPEM {
					t.Errorf("configmap ca.crt = %q, want %q", cm.Data["ca.crt"], testCAPEM)
				}
				if !slices.Contains(c.Env, corev1.EnvVar{Name: "CLUSTRAL_CA_FILE", Value: "/etc/clustral-ca/ca.crt"}) ||
					!slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/etc/clustral-ca" && m.ReadOnly }) ||
					!slices.ContainsFunc(ds.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
						return v.ConfigMap != nil && v.ConfigMap.Name == chartInstall.ConfigMap && slices.Equal(v.ConfigMap.Items, []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}})
					}) {
					t.Errorf("coordinator CA not wired: env %+v mounts %+v", c.Env, c.VolumeMounts)
				}
			}, false},
		{"image tag and pull policy", append(chartValues(), "--set", "image.repository=registry.example.com/clustral", "--set", "image.tag=v1.2.3", "--set", "image.pullPolicy=IfNotPresent"),
			func(t *testing.T, objs []object, ds *appsv1.DaemonSet, c corev1.Container) {
				if c.Image != "registry.example.com/clustral:v1.2.3" || c.ImagePullPolicy != corev1.PullIfNotPresent {
					t.Errorf("image %q pull policy %q", c.Image, c.ImagePullPolicy)
				}
				if v := ds.Labels["app.kubernetes.io/version"]; v != "v1.2.3" {
					t.Errorf("version label %q, want v1.2.3", v)
				}
			}, false},
		{"image digest", append(chartValues(), "--set", "image.tag=v1.2.3", "--set", "image.digest=sha256:"+strings.Repeat("ab", 32)),
			func(t *testing.T, objs []object, ds *appsv1.DaemonSet, c corev1.Container) {
				if want := "ghcr.io/clustral/clustral@sha256:" + strings.Repeat("ab", 32); c.Image != want {
					t.Errorf("image %q, want %q", c.Image, want)
				}
			}, false},
		{"resources", append(chartValues(), "--set", "resources.requests.cpu=100m", "--set", "resources.limits.memory=1Gi"),
			func(t *testing.T, objs []object, ds *appsv1.DaemonSet, c corev1.Container) {
				want := corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("1Gi")},
				}
				if !equality.Semantic.DeepEqual(c.Resources, want) {
					t.Errorf("resources = %+v, want %+v", c.Resources, want)
				}
			}, false},
		{"node selection", append(chartValues(),
			"--set-json", `tolerations=[{"key":"node-role.kubernetes.io/control-plane","operator":"Exists","effect":"NoSchedule"}]`,
			"--set-json", `nodeSelector={"kubernetes.io/os":"linux","pool":"edge"}`,
			"--set-json", `affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"zone","operator":"In","values":["a"]}]}]}}}`,
			"--set", "priorityClassName=system-cluster-critical"),
			func(t *testing.T, objs []object, ds *appsv1.DaemonSet, c corev1.Container) {
				pod := ds.Spec.Template.Spec
				wantTol := []corev1.Toleration{{Key: "node-role.kubernetes.io/control-plane", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
				if !slices.Equal(pod.Tolerations, wantTol) {
					t.Errorf("tolerations = %+v, want %+v", pod.Tolerations, wantTol)
				}
				if !equality.Semantic.DeepEqual(pod.NodeSelector, map[string]string{"kubernetes.io/os": "linux", "pool": "edge"}) {
					t.Errorf("nodeSelector = %v", pod.NodeSelector)
				}
				if a := pod.Affinity; a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil ||
					a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchExpressions[0].Key != "zone" {
					t.Errorf("affinity = %+v", a)
				}
				if pod.PriorityClassName != "system-cluster-critical" {
					t.Errorf("priorityClassName = %q", pod.PriorityClassName)
				}
			}, false},
		{"log format and level, extra args", append(chartValues(), "--set", "logFormat=text", "--set", "logLevel=debug", "--set", "extraArgs={--rate-limit-qps=20,--rate-limit-burst=40}"),
			func(t *testing.T, objs []object, ds *appsv1.DaemonSet, c corev1.Container) {
				want := []string{"agent", "--join-token-file=/etc/clustral/join-token", "--health-listen=:8080", "--drain-timeout=20s",
					"--log-format=text", "--audit-dir=/var/lib/clustral/audit", "--log-level=debug", "--rate-limit-qps=20", "--rate-limit-burst=40"}
				if !slices.Equal(c.Args, want) {
					t.Errorf("args = %q, want %q", c.Args, want)
				}
			}, false},
		{"health port and drain timeout", append(chartValues(), "--set", "healthPort=9090", "--set", "drainTimeoutSeconds=45"),
			func(t *testing.T, objs []object, ds *appsv1.DaemonSet, c corev1.Container) {
				if !slices.Contains(c.Args, "--health-listen=:9090") || !slices.Contains(c.Args, "--drain-timeout=45s") {
					t.Errorf("args = %q, want --health-listen=:9090 and --drain-timeout=45s", c.Args)
				}
				if len(c.Ports) != 1 || c.Ports[0].Name != "health" || c.Ports[0].ContainerPort != 9090 || c.Ports[0].HostPort != 0 {
					t.Errorf("ports = %+v, want health on 9090", c.Ports)
				}
				for _, p := range []*corev1.Probe{c.StartupProbe, c.LivenessProbe, c.ReadinessProbe} {
					if p == nil || p.HTTPGet == nil || p.HTTPGet.Port.String() != "health" {
						t.Errorf("probe %+v does not use the health port", p)
					}
				}
				if g := ptr.Deref(ds.Spec.Template.Spec.TerminationGracePeriodSeconds, 0); g != 65 {
					t.Errorf("terminationGracePeriodSeconds = %d, want 45+20", g)
				}
			}, true},
		{"audit spool size", append(chartValues(), "--set", "auditSpool.sizeLimit=1Gi"),
			func(t *testing.T, objs []object, ds *appsv1.DaemonSet, c corev1.Container) {
				for _, v := range ds.Spec.Template.Spec.Volumes {
					if v.Name == "state" && (v.EmptyDir == nil || v.EmptyDir.SizeLimit.Cmp(resource.MustParse("1Gi")) != 0) {
						t.Errorf("state volume = %+v, want a 1Gi emptyDir", v.VolumeSource)
					}
				}
			}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := renderChart(t, chartRelease, chartNS, tt.flags...)
			ds := chartDaemonSet(t, objs)
			if !tt.moved {
				checkDaemonSet(t, ds, chartInstall)
			}
			tt.check(t, objs, ds, ds.Spec.Template.Spec.Containers[0])
		})
	}
}

// TestChartEquivalence renders the chart with its default values, as a
// release named clustral-agent in namespace clustral using the Secret
// clustral-join-token, and compares it with the kustomize base field by
// field: whatever bears on security must be identical.
func TestChartEquivalence(t *testing.T) {
	chart := renderChart(t, "clustral-agent", agentNS, "--set", "coordinator.url="+chartURL, "--set", "joinToken.existingSecret=clustral-join-token")
	base := parseObjects(t, kustomize(t, repoPath("deploy", "agent")))

	type objects struct {
		sa  corev1.ServiceAccount
		cr  rbacv1.ClusterRole
		crb rbacv1.ClusterRoleBinding
		ds  appsv1.DaemonSet
	}
	decode := func(objs []object) *objects {
		var o objects
		find(t, objs, "ServiceAccount").decode(t, &o.sa)
		find(t, objs, "ClusterRole").decode(t, &o.cr)
		find(t, objs, "ClusterRoleBinding").decode(t, &o.crb)
		find(t, objs, "DaemonSet").decode(t, &o.ds)
		return &o
	}
	c, b := decode(chart), decode(base)
	pod := func(o *objects) *corev1.PodSpec { return &o.ds.Spec.Template.Spec }
	ctr := func(o *objects) *corev1.Container { return &o.ds.Spec.Template.Spec.Containers[0] }

	fields := []struct {
		name string
		get  func(o *objects) any
	}{
		{"service account", func(o *objects) any { return [2]string{o.sa.Namespace, o.sa.Name} }},
		{"service account automount", func(o *objects) any { return o.sa.AutomountServiceAccountToken }},
		{"ClusterRole name", func(o *objects) any { return o.cr.Name }},
		{"ClusterRole rules", func(o *objects) any { return o.cr.Rules }},
		{"ClusterRole aggregation", func(o *objects) any { return o.cr.AggregationRule }},
		{"ClusterRoleBinding roleRef", func(o *objects) any { return o.crb.RoleRef }},
		{"ClusterRoleBinding subjects", func(o *objects) any { return o.crb.Subjects }},
		{"DaemonSet name", func(o *objects) any { return [2]string{o.ds.Namespace, o.ds.Name} }},
		{"update strategy", func(o *objects) any { return o.ds.Spec.UpdateStrategy }},
		{"pod service account", func(o *objects) any { return pod(o).ServiceAccountName }},
		{"pod token automount", func(o *objects) any { return pod(o).AutomountServiceAccountToken }},
		{"pod service links", func(o *objects) any { return pod(o).EnableServiceLinks }},
		{"pod host namespaces", func(o *objects) any { return [3]bool{pod(o).HostNetwork, pod(o).HostPID, pod(o).HostIPC} }},
		{"pod grace period", func(o *objects) any { return pod(o).TerminationGracePeriodSeconds }},
		{"pod securityContext", func(o *objects) any { return pod(o).SecurityContext }},
		{"pod volumes", func(o *objects) any { return pod(o).Volumes }},
		{"pod nodeSelector", func(o *objects) any { return pod(o).NodeSelector }},
		{"pod tolerations", func(o *objects) any { return pod(o).Tolerations }},
		{"pod affinity", func(o *objects) any { return pod(o).Affinity }},
		{"pod priority class", func(o *objects) any { return pod(o).PriorityClassName }},
		{"pod init containers", func(o *objects) any { return pod(o).InitContainers }},
		{"containers", func(o *objects) any { return len(pod(o).Containers) }},
		{"image", func(o *objects) any { return [2]string{ctr(o).Image, string(ctr(o).ImagePullPolicy)} }},
		{"command", func(o *objects) any { return ctr(o).Command }},
		{"args", func(o *objects) any { return ctr(o).Args }},
		{"env", func(o *objects) any { return ctr(o).Env }},
		{"ports", func(o *objects) any { return ctr(o).Ports }},
		{"container securityContext", func(o *objects) any { return ctr(o).SecurityContext }},
		{"volume mounts", func(o *objects) any { return ctr(o).VolumeMounts }},
		{"resources", func(o *objects) any { return ctr(o).Resources }},
		{"startup probe", func(o *objects) any { return ctr(o).StartupProbe }},
		{"liveness probe", func(o *objects) any { return ctr(o).LivenessProbe }},
		{"readiness probe", func(o *objects) any { return ctr(o).ReadinessProbe }},
	}
	for _, f := range fields {
		t.Run(f.name, func(t *testing.T) {
			if got, want := f.get(c), f.get(b); !equality.Semantic.DeepEqual(got, want) {
				t.Errorf("chart %+v\nbase  %+v", got, want)
			}
		})
	}
	checkDaemonSet(t, &c.ds, baseInstall)
}

// TestChartFlags checks that the chart, with every flag-bearing value
// set, passes only flags that `clustral agent` has.
func TestChartFlags(t *testing.T) {
	objs := renderChart(t, chartRelease, chartNS, append(chartValues(),
		"--set", "logLevel=debug", "--set", "extraArgs={--rate-limit-qps=20}",
		"--set-file", "coordinator.caCert="+writeTemp(t, "ca.crt", testCAPEM))...)
	checkFlags(t, chartDaemonSet(t, objs).Spec.Template.Spec.Containers[0])
}

// TestChartInstall installs the chart the way deploy/README.md says, into
// a namespace enforcing the restricted Pod Security Standard: a server
// dry run of `helm template`'s output must pass the apiserver's
// validation and admission, `helm install` must succeed, and then the
// apiserver judges the release's RBAC with the base's matrix, a real
// token of its service account, and its pod.
func TestChartInstall(t *testing.T) {
	env.LogOnFailure(t)
	ctx := t.Context()
	kube := env.APIServer.Client()
	var nsFile corev1.Namespace
	find(t, parseObjects(t, readFile(t, repoPath("deploy", "agent", "base", "namespace.yaml"))), "Namespace").decode(t, &nsFile)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: chartNS, Labels: nsFile.Labels}}
	// Namespaces outlive the test (no controller deletes them): a second
	// run finds it.
	if _, err := kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", chartNS, err)
	}
	tokenFile := writeTemp(t, "join-token", chartToken+"\n")
	values := []string{"--namespace", chartNS, "--set", "coordinator.url=" + chartURL, "--set-file", "joinToken.value=" + tokenFile}

	h := helmFor(t)
	res, err := h.Run(ctx, append([]string{"template", chartRelease, chartDir()}, values...)...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, res.Stderr)
	}
	manifest := writeTemp(t, "manifest.yaml", res.Stdout)
	out := kubectl(t, "apply", "--dry-run=server", "-f", manifest)
	for _, want := range []string{
		"serviceaccount/" + chartInstall.ServiceAccount, "secret/" + chartInstall.TokenSecret, "configmap/" + chartInstall.ConfigMap,
		"clusterrole.rbac.authorization.k8s.io/" + chartInstall.DaemonSet + "-impersonator",
		"clusterrolebinding.rbac.authorization.k8s.io/" + chartInstall.DaemonSet + "-impersonator",
		"daemonset.apps/" + chartInstall.DaemonSet,
	} {
		if !strings.Contains(out, want+" created (server dry run)") {
			t.Errorf("server dry run output lacks %s created:\n%s", want, out)
		}
	}
	if _, err := kube.CoreV1().ServiceAccounts(chartNS).Get(ctx, chartInstall.ServiceAccount, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("after the dry run, get service account: err = %v, want NotFound", err)
	}

	res, err = h.Run(ctx, append([]string{"install", chartRelease, chartDir()}, values...)...)
	if err != nil {
		t.Fatalf("helm install: %v\n%s%s", err, res.Stdout, res.Stderr)
	}
	if !strings.Contains(res.Stdout, "STATUS: deployed") || strings.Contains(res.Stdout, "WARNING") {
		t.Errorf("helm install output, want deployed and no warning:\n%s", res.Stdout)
	}
	t.Cleanup(func() {
		// The ClusterRole and binding outlive the namespace otherwise.
		// t.Context() is already done here.
		if res, err := h.Run(context.Background(), "uninstall", chartRelease, "--namespace", chartNS); err != nil {
			t.Errorf("helm uninstall: %v\n%s", err, res.Stderr)
		}
	})
	secret, err := kube.CoreV1().Secrets(chartNS).Get(ctx, chartInstall.TokenSecret, metav1.GetOptions{})
	if err != nil || string(secret.Data["token"]) != chartToken {
		t.Fatalf("installed join token secret = %v, %v; want token %q", secret, err, chartToken)
	}

	// A new token through helm upgrade replaces the Secret and changes
	// the pod template, so the agents roll.
	t.Run("upgrade with a new token", func(t *testing.T) {
		before, err := kube.AppsV1().DaemonSets(chartNS).Get(ctx, chartInstall.DaemonSet, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		const newToken = "cjt_ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvu"
		newValues := []string{"--namespace", chartNS, "--set", "coordinator.url=" + chartURL, "--set-file", "joinToken.value=" + writeTemp(t, "join-token", newToken+"\n")}
		if res, err := h.Run(ctx, append([]string{"upgrade", chartRelease, chartDir()}, newValues...)...); err != nil {
			t.Fatalf("helm upgrade: %v\n%s%s", err, res.Stdout, res.Stderr)
		}
		after, err := kube.AppsV1().DaemonSets(chartNS).Get(ctx, chartInstall.DaemonSet, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if a, b := before.Spec.Template.Annotations["checksum/config"], after.Spec.Template.Annotations["checksum/config"]; a == "" || a == b {
			t.Errorf("pod template checksum %q before, %q after a new token: want a change that rolls the agents", a, b)
		}
		secret, err := kube.CoreV1().Secrets(chartNS).Get(ctx, chartInstall.TokenSecret, metav1.GetOptions{})
		if err != nil || string(secret.Data["token"]) != newToken {
			t.Errorf("join token secret after upgrade = %v, %v; want token %q", secret, err, newToken)
		}
	})
	t.Run("rbac", func(t *testing.T) { checkRBAC(t, chartInstall) })
	t.Run("token", func(t *testing.T) { checkToken(t, chartInstall) })
	t.Run("pod admission", func(t *testing.T) {
		ds, err := kube.AppsV1().DaemonSets(chartNS).Get(ctx, chartInstall.DaemonSet, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "clustral-agent-admission", Namespace: chartNS, Labels: ds.Spec.Template.Labels},
			Spec:       ds.Spec.Template.Spec,
		}
		if _, err := kube.CoreV1().Pods(chartNS).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
			t.Fatalf("the chart's pod is not admitted under the restricted Pod Security Standard: %v", err)
		}
	})
}

// TestChartNamespaceWarning: installed into a namespace that does not
// enforce the restricted Pod Security Standard, the chart says so and
// how to fix it.
func TestChartNamespaceWarning(t *testing.T) {
	env.LogOnFailure(t)
	const ns = "clustral-lax"
	kube := env.APIServer.Client()
	if _, err := kube.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", ns, err)
	}
	// --dry-run=server lets the chart look the namespace up, and
	// installs nothing.
	args := append([]string{"install", "lax", chartDir(), "--namespace", ns, "--dry-run=server"}, chartValues()...)
	res, err := helmFor(t).Run(t.Context(), args...)
	if err != nil {
		t.Fatalf("helm install --dry-run=server: %v\n%s", err, res.Stderr)
	}
	want := "kubectl label namespace " + ns + " pod-security.kubernetes.io/enforce=restricted"
	if !strings.Contains(res.Stdout, "WARNING: namespace "+ns+" does not enforce the restricted Pod") || !strings.Contains(res.Stdout, want) {
		t.Errorf("helm install notes lack the warning and %q:\n%s", want, res.Stdout)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestChartValuesDocumented: every value of the chart is in the table of
// deploy/README.md, so a new value cannot ship undocumented.
func TestChartValuesDocumented(t *testing.T) {
	var values map[string]any
	if err := yaml.Unmarshal(readFile(t, filepath.Join(chartDir(), "values.yaml")), &values); err != nil {
		t.Fatalf("values.yaml: %v", err)
	}
	readme := string(readFile(t, repoPath("deploy", "README.md")))
	_, section, ok := strings.Cut(readme, "### Or: install with Helm")
	if !ok {
		t.Fatal(`deploy/README.md has no "### Or: install with Helm" section`)
	}
	section, _, _ = strings.Cut(section, "\n### ")
	for key := range values {
		if !strings.Contains(section, "| `"+key) && !strings.Contains(section, ", `"+key+"`") {
			t.Errorf("value %s is not in the table of deploy/README.md", key)
		}
	}
}
