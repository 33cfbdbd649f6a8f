package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"
)

// KWOKNodeName is the name of KWOK's fake node. It is also its address,
// so the apiserver reaches KWOK's kubelet API on 127.0.0.1.
const KWOKNodeName = "127.0.0.1"

// KWOKNodeAnnotation marks the nodes KWOK manages.
const KWOKNodeAnnotation = "kwok.x-k8s.io/node"

// kwokCRDs are the KWOK kinds served from custom resources
// (--enable-crds); KWOK does not install their definitions itself.
var kwokCRDs = []struct{ kind, plural string }{
	{"Exec", "execs"}, {"ClusterExec", "clusterexecs"},
	{"Logs", "logs"}, {"ClusterLogs", "clusterlogs"},
	{"Attach", "attaches"}, {"ClusterAttach", "clusterattaches"},
	{"PortForward", "portforwards"}, {"ClusterPortForward", "clusterportforwards"},
}

var kwokGroupVersion = schema.GroupVersion{Group: "kwok.x-k8s.io", Version: "v1alpha1"}

// KWOK runs KWOK as the kubelet API of one fake node, KWOKNodeName, so
// that exec, logs and port-forward work through the apiserver without a
// kubelet. Exec runs commands on this host; logs are read from CRI-format
// files; port-forward dials local addresses. Each is configured per pod
// with SetExec, SetLogs and SetPortForward. KWOK learns of these rules
// through a watch, a moment after they are created: retry the first
// request (see Eventually).
//
// Known KWOK v0.8.0 limitations: stdin EOF is not passed on to exec'd
// commands, non-zero exit codes come back as internal errors, and the
// tail of `exec -it` output can be cut.
type KWOK struct {
	// Port is the kubelet API port (HTTPS and HTTP on one port).
	Port int
	// LogPath is the file receiving KWOK's output (across restarts).
	LogPath string

	api        *APIServer
	bin        string
	kubeconfig string
	config     string

	mu   sync.Mutex
	proc *Process
	pids []int
}

// StartKWOK installs KWOK's custom resource definitions into api and
// starts KWOK with its files under dir. It does not create the node; see
// CreateNode (Env.StartKWOK does both). The caller must call Close.
func StartKWOK(ctx context.Context, dir string, api *APIServer) (*KWOK, error) {
	bin, dir, err := componentDir("kwok", dir)
	if err != nil {
		return nil, err
	}
	if err := installKWOKCRDs(ctx, api); err != nil {
		return nil, fmt.Errorf("start kwok: %w", err)
	}
	k := &KWOK{
		LogPath:    filepath.Join(dir, "kwok.log"),
		api:        api,
		bin:        bin,
		kubeconfig: filepath.Join(dir, "kubeconfig"),
		config:     filepath.Join(dir, "kwok.yaml"),
	}
	if err := api.WriteKubeconfig(k.kubeconfig, "kwok", api.AdminToken); err != nil {
		return nil, fmt.Errorf("start kwok: %w", err)
	}
	stages, err := kwokStages()
	if err != nil {
		return nil, fmt.Errorf("start kwok: %w", err)
	}
	if err := os.WriteFile(k.config, stages, 0o644); err != nil {
		return nil, fmt.Errorf("start kwok: %w", err)
	}
	err = onFreePorts(1, func(ports []int) error {
		k.Port = ports[0]
		return k.start(ctx)
	})
	if err != nil {
		return nil, fmt.Errorf("start kwok: %w", err)
	}
	return k, nil
}

// start starts KWOK on k.Port. k.mu must be held or k not yet shared.
func (k *KWOK) start(ctx context.Context) error {
	var kinds string
	for i, c := range kwokCRDs {
		if i > 0 {
			kinds += ","
		}
		kinds += c.kind
	}
	args := []string{
		"--config=" + k.config,
		"--kubeconfig=" + k.kubeconfig,
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector=" + KWOKNodeAnnotation + "=fake",
		"--node-ip=127.0.0.1",
		"--node-name=" + KWOKNodeName,
		fmt.Sprintf("--node-port=%d", k.Port),
		"--server-address=" + hostPort(k.Port),
		"--enable-crds=" + kinds,
	}
	// KWOK also reads ~/.kwok/kwok.yaml; point HOME elsewhere so a
	// developer's configuration cannot interfere.
	env := append(EnvironWithout("KUBECONFIG=", "HOME="), "HOME="+filepath.Dir(k.config))
	p, err := StartProcess("kwok", k.bin, args, env, k.LogPath)
	if err != nil {
		return err
	}
	k.pids = append(k.pids, p.Pid())
	hc := &http.Client{Timeout: 2 * time.Second}
	if err := p.waitReady(ctx, time.Minute, answersOK(hc, "http://"+hostPort(k.Port)+"/healthz", nil)); err != nil {
		return err
	}
	k.proc = p
	return nil
}

// Restart stops KWOK, starts it again on the same port, and recreates the
// fake node (deleting it first), which KWOK would otherwise not
// reinitialize.
func (k *KWOK) Restart(ctx context.Context) error {
	k.mu.Lock()
	k.proc.Stop()
	err := k.start(ctx)
	for i := 0; err != nil && i < 20 && errors.Is(err, errAddrInUse); i++ {
		time.Sleep(100 * time.Millisecond)
		err = k.start(ctx)
	}
	k.mu.Unlock()
	if err != nil {
		return fmt.Errorf("restart kwok: %w", err)
	}
	err = k.api.Client().CoreV1().Nodes().Delete(ctx, KWOKNodeName, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("restart kwok: delete node: %w", err)
	}
	if err := k.CreateNode(ctx); err != nil {
		return fmt.Errorf("restart kwok: %w", err)
	}
	return nil
}

func (k *KWOK) allPids() []int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]int(nil), k.pids...)
}

// Pid returns KWOK's current process id.
func (k *KWOK) Pid() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.proc.Pid()
}

// Close stops KWOK. The node and pods stay in the apiserver.
func (k *KWOK) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.proc.Stop()
	return nil
}

// CreateNode creates the fake node (if missing) and waits until KWOK has
// marked it Ready.
func (k *KWOK) CreateNode(ctx context.Context) error {
	nodes := k.api.Client().CoreV1().Nodes()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:        KWOKNodeName,
		Annotations: map[string]string{KWOKNodeAnnotation: "fake"},
		Labels:      map[string]string{"type": "kwok", "kubernetes.io/hostname": KWOKNodeName, "kubernetes.io/os": "linux"},
	}}
	if _, err := nodes.Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create node %s: %w", KWOKNodeName, err)
	}
	err := poll(ctx, time.Minute, func(ctx context.Context) error {
		n, err := nodes.Get(ctx, KWOKNodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("node %s not ready", KWOKNodeName)
	})
	if err != nil {
		return fmt.Errorf("create node: %w (kwok log %s)", err, k.LogPath)
	}
	return nil
}

// FakePod returns a pod on the fake node with one container per name
// ("app" if none), not yet created.
func FakePod(namespace, name string, containers ...string) *corev1.Pod {
	if len(containers) == 0 {
		containers = []string{"app"}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app": name}},
		Spec:       corev1.PodSpec{NodeName: KWOKNodeName},
	}
	for _, c := range containers {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: c, Image: "registry.invalid/fake:latest"})
	}
	return pod
}

// CreatePod creates pod (its spec.nodeName forced to the fake node) and
// waits until KWOK reports it Running and Ready. It retries while the
// namespace's default service account does not exist yet.
func (k *KWOK) CreatePod(ctx context.Context, pod *corev1.Pod) (*corev1.Pod, error) {
	pod = pod.DeepCopy()
	pod.Spec.NodeName = KWOKNodeName
	pods := k.api.Client().CoreV1().Pods(pod.Namespace)
	err := poll(ctx, 30*time.Second, func(ctx context.Context) error {
		_, err := pods.Create(ctx, pod, metav1.CreateOptions{})
		if err != nil && strings.Contains(err.Error(), "service account") {
			return err // admission races the serviceaccount controller
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return permanent{err}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	var got *corev1.Pod
	err = poll(ctx, time.Minute, func(ctx context.Context) error {
		p, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("phase %s", p.Status.Phase)
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				got = p
				return nil
			}
		}
		return fmt.Errorf("not ready")
	})
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w (kwok log %s)", pod.Namespace, pod.Name, err, k.LogPath)
	}
	return got, nil
}

// SetExec makes `exec` into the pod's containers run the command on this
// host, in workDir (empty: KWOK's working directory) with env added.
func (k *KWOK) SetExec(ctx context.Context, namespace, pod, workDir string, env map[string]string) error {
	local := map[string]any{}
	if workDir != "" {
		local["workDir"] = workDir
	}
	var envs []any
	for name, v := range env {
		envs = append(envs, map[string]any{"name": name, "value": v})
	}
	if len(envs) > 0 {
		local["envs"] = envs
	}
	spec := map[string]any{"execs": []any{map[string]any{"local": local}}}
	return k.apply(ctx, "Exec", "execs", namespace, pod, spec)
}

// SetLogs makes `logs` of the pod's containers read logsFile, a CRI-format
// log (see WriteCRILog). With follow, `logs -f` keeps reading the file.
func (k *KWOK) SetLogs(ctx context.Context, namespace, pod, logsFile string, follow bool) error {
	spec := map[string]any{"logs": []any{map[string]any{"logsFile": logsFile, "follow": follow}}}
	return k.apply(ctx, "Logs", "logs", namespace, pod, spec)
}

// SetPortForward makes port-forward to port of the pod dial targetAddr
// (host:port) on this host.
func (k *KWOK) SetPortForward(ctx context.Context, namespace, pod string, port int32, targetHost string, targetPort int32) error {
	spec := map[string]any{"forwards": []any{map[string]any{
		"ports":  []any{int64(port)},
		"target": map[string]any{"address": targetHost, "port": int64(targetPort)},
	}}}
	return k.apply(ctx, "PortForward", "portforwards", namespace, pod, spec)
}

// apply creates or replaces the namespaced KWOK object kind/name with spec
// by server-side apply.
func (k *KWOK) apply(ctx context.Context, kind, resource, namespace, name string, spec map[string]any) error {
	dc, err := dynamic.NewForConfig(k.api.Config())
	if err != nil {
		return err
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": kwokGroupVersion.String(),
		"kind":       kind,
		"metadata":   map[string]any{"name": name, "namespace": namespace},
		"spec":       spec,
	}}
	_, err = dc.Resource(kwokGroupVersion.WithResource(resource)).Namespace(namespace).
		Apply(ctx, name, obj, metav1.ApplyOptions{FieldManager: "clustral-harness", Force: true})
	if err != nil {
		return fmt.Errorf("apply %s %s/%s: %w", kind, namespace, name, err)
	}
	return nil
}

// WriteCRILog writes lines to path in the CRI log format KWOK reads:
// "<RFC3339Nano time> stdout F <line>".
func WriteCRILog(path string, lines ...string) error {
	return os.WriteFile(path, criLog(lines), 0o644)
}

// AppendCRILog appends lines to the CRI-format log at path, as a running
// container would: a `logs -f` reading it shows them.
func AppendCRILog(path string, lines ...string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(criLog(lines)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// criLog returns lines in the CRI log format, stamped from now on.
func criLog(lines []string) []byte {
	var buf bytes.Buffer
	now := time.Now()
	for i, l := range lines {
		fmt.Fprintf(&buf, "%s stdout F %s\n", now.Add(time.Duration(i)*time.Millisecond).UTC().Format(time.RFC3339Nano), l)
	}
	return buf.Bytes()
}

// installKWOKCRDs creates KWOK's CRDs for kwokCRDs in api (keeping ones
// that exist) and waits until they are established. The definitions come
// from the KWOK module source in the Go module cache, the same source the
// kwok binary is built from.
func installKWOKCRDs(ctx context.Context, api *APIServer) error {
	dir, err := kwokCRDDir()
	if err != nil {
		return err
	}
	dc, err := dynamic.NewForConfig(api.Config())
	if err != nil {
		return err
	}
	crds := dc.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	for _, crd := range kwokCRDs {
		kind, plural := crd.kind, crd.plural
		b, err := os.ReadFile(filepath.Join(dir, "kwok.x-k8s.io_"+plural+".yaml"))
		if err != nil {
			return fmt.Errorf("kwok crd %s: %w", kind, err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(bytes.TrimPrefix(b, []byte("---\n")), &obj); err != nil {
			return fmt.Errorf("kwok crd %s: %w", kind, err)
		}
		_, err = crds.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("kwok crd %s: %w", kind, err)
		}
		name := plural + "." + kwokGroupVersion.Group
		err = poll(ctx, 30*time.Second, func(ctx context.Context) error {
			u, err := crds.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return nil
				}
			}
			return fmt.Errorf("crd %s not established", name)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

var kwokCRDDirOnce = sync.OnceValues(func() (string, error) {
	cmd := exec.Command("go", "mod", "download", "-json", "sigs.k8s.io/kwok@"+KWOKVersion)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GO111MODULE=on")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("locate kwok %s source (go mod download): %w", KWOKVersion, err)
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(out, &m); err != nil {
		return "", fmt.Errorf("locate kwok %s source: %w", KWOKVersion, err)
	}
	if m.Error != "" || m.Dir == "" {
		return "", fmt.Errorf("locate kwok %s source: %s", KWOKVersion, m.Error)
	}
	return filepath.Join(m.Dir, "kustomize", "crd", "bases"), nil
})

func kwokCRDDir() (string, error) { return kwokCRDDirOnce() }

// kwokStages returns KWOK's configuration: the lifecycle stages for the
// fake node and its pods, as a YAML stream of JSON documents.
func kwokStages() ([]byte, error) {
	stage := func(name, kind string, match []map[string]any, delayMS int, next map[string]any) map[string]any {
		spec := map[string]any{
			"resourceRef": map[string]any{"apiGroup": "v1", "kind": kind},
			"selector":    map[string]any{"matchExpressions": match},
			"next":        next,
		}
		if delayMS > 0 {
			spec["delay"] = map[string]any{"durationMilliseconds": delayMS, "jitterDurationMilliseconds": delayMS + 5000}
		}
		return map[string]any{
			"apiVersion": kwokGroupVersion.String(),
			"kind":       "Stage",
			"metadata":   map[string]any{"name": name},
			"spec":       spec,
		}
	}
	expr := func(key, op string, values ...string) map[string]any {
		m := map[string]any{"key": key, "operator": op}
		if len(values) > 0 {
			m["values"] = values
		}
		return m
	}
	const nodeReady = `.status.conditions.[] | select( .type == "Ready" ) | .status`
	stages := []map[string]any{
		stage("node-initialize", "Node",
			[]map[string]any{expr(nodeReady, "NotIn", "True")}, 0,
			map[string]any{"statusTemplate": nodeInitializeTemplate}),
		stage("node-heartbeat", "Node",
			[]map[string]any{expr(".status.phase", "In", "Running"), expr(nodeReady, "In", "True")}, 20000,
			map[string]any{"statusTemplate": nodeHeartbeatTemplate}),
		stage("pod-ready", "Pod",
			[]map[string]any{
				expr(".metadata.deletionTimestamp", "DoesNotExist"),
				expr(".status.phase", "In", "Pending"),
			}, 0,
			map[string]any{"statusTemplate": podReadyTemplate}),
		stage("pod-delete", "Pod",
			[]map[string]any{expr(".metadata.deletionTimestamp", "Exists")}, 0,
			map[string]any{"delete": true}),
	}
	var buf bytes.Buffer
	for _, s := range stages {
		b, err := json.Marshal(s)
		if err != nil {
			return nil, err
		}
		buf.WriteString("---\n")
		buf.Write(b)
		buf.WriteString("\n")
	}
	return buf.Bytes(), nil
}

// Stage status templates: Go templates rendered by KWOK into YAML status.
// NodeIP, NodeName and NodePort are KWOK's --node-ip, --node-name and
// --node-port.
const nodeInitializeTemplate = `{{ $now := Now }}
` + nodeReadyCondition + `  lastTransitionTime: {{ $now | Quote }}
addresses:
- type: InternalIP
  address: {{ NodeIP | Quote }}
- type: Hostname
  address: {{ NodeName | Quote }}
daemonEndpoints:
  kubeletEndpoint:
    Port: {{ NodePort }}
capacity: {cpu: "32", memory: 64Gi, pods: "110"}
allocatable: {cpu: "32", memory: 64Gi, pods: "110"}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  kubeletVersion: kwok
  kubeProxyVersion: kwok
  containerRuntimeVersion: kwok
  kernelVersion: kwok
  osImage: kwok
  machineID: ""
  systemUUID: ""
  bootID: ""
phase: Running
`

const nodeHeartbeatTemplate = `{{ $now := Now }}
` + nodeReadyCondition + `  lastTransitionTime: {{ or .metadata.creationTimestamp $now | Quote }}
`

// nodeReadyCondition is the node's Ready condition in both templates, up
// to its lastTransitionTime, which each sets its own way.
const nodeReadyCondition = `conditions:
- type: Ready
  status: "True"
  reason: KubeletReady
  message: kwok fake kubelet is ready
  lastHeartbeatTime: {{ $now | Quote }}
`

const podReadyTemplate = `{{ $now := Now }}
conditions:
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  imageID: ""
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIP | Quote }}
podIP: {{ NodeIP | Quote }}
phase: Running
startTime: {{ $now | Quote }}
`

// permanent marks an error poll must not retry.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// Eventually calls f every 100ms until it returns nil or timeout passes,
// and returns f's last error. Use it for state that components pick up
// asynchronously, e.g. KWOK's exec, logs and port-forward rules or RBAC
// changes.
func Eventually(ctx context.Context, timeout time.Duration, f func(context.Context) error) error {
	return poll(ctx, timeout, f)
}

// poll calls f until it returns nil or a permanent error, or timeout
// passes.
func poll(ctx context.Context, timeout time.Duration, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		err := f(ctx)
		if err == nil {
			return nil
		}
		var p permanent
		if errors.As(err, &p) {
			return p.error
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %v: %w", timeout, err)
		case <-t.C:
		}
	}
}
