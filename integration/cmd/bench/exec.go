package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// The exec measurements' pod, roles, Kubernetes group, and the namespace
// where sessions are recorded (the pod is in it and in "default").
const (
	execPod      = "bench-exec"
	execRole     = "shell"
	execRecRole  = "shell-recorded"
	execGroup    = "clustral:bench-shell"
	execRecorded = "bench-recorded"
	// execStreamBytes is what `kubectl exec -- cat` of a stream moves.
	execStreamBytes = 64 << 20
)

// benchExec measures exec through the mesh against KWOK's exec (a
// command on this host), with the session recording off and then on:
//
//   - exec_throughput_mbps_off and _on: a 64 MiB stream of printable
//     bytes to kubectl exec's stdout, median of -transfer-runs; the runs
//     alternate, off then on, so that a change of the machine's load
//     weighs on both alike. A pod in "default" is not recorded (the
//     shell role records nothing), the same pod in execRecorded is (the
//     shell-recorded role, limited to that namespace, requires it: a
//     session is recorded by the strongest policy of the roles that
//     allow it);
//   - recording_overhead_pct: how much longer the recorded stream takes
//     than the unrecorded one run just before it, median of the pairs
//     (a pair shares the machine's load, the medians of each side need
//     not);
//   - recording_bytes_per_output_byte: the size of the recording of a
//     session that writes 2000 short lines, one write each, as an
//     interactive shell does, over the bytes it wrote.
func benchExec(ctx context.Context, m *mesh, f flags) error {
	progress("exec: starting KWOK")
	kw, err := m.env.StartKWOK(ctx)
	if err != nil {
		return err
	}
	c := m.env.APIServer.Client()
	_, err = c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: execRecorded}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace: %w", err)
	}
	for _, ns := range []string{"default", execRecorded} {
		if err := kw.SetExec(ctx, ns, execPod, "", nil); err != nil {
			return err
		}
		// Without the controller manager nobody makes the namespace's
		// default service account, which admission wants for a pod.
		_, err = c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create service account: %w", err)
		}
		if _, err := kw.CreatePod(ctx, harness.FakePod(ns, execPod, "c")); err != nil {
			return err
		}
	}
	_, err = c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "bench-shell"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods", "pods/exec"}, Verbs: []string{"create", "get"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create ClusterRole: %w", err)
	}
	if err := harness.BindClusterRole(ctx, c, "bench-shell", "bench-shell", rbacv1.GroupKind, execGroup); err != nil {
		return err
	}
	for _, role := range []proto.Role{
		{Name: execRole, Groups: []string{execGroup}, Recording: proto.RecordingOff},
		{Name: execRecRole, Groups: []string{execGroup}, Recording: proto.RecordingRequired, Restrictions: &proto.Restrictions{Namespaces: []string{execRecorded}, Resources: []string{"pods", "pods/exec"}}},
	} {
		if err := m.api(ctx, "POST", "/api/v1/roles", role, nil); err != nil {
			return err
		}
		var a proto.Assignment
		if err := m.api(ctx, "POST", "/api/v1/assignments", proto.Assignment{User: benchUser.Email, Role: role.Name, Cluster: cluster}, &a); err != nil {
			return err
		}
		defer m.api(context.Background(), "DELETE", "/api/v1/assignments/"+a.ID, nil, nil)
	}

	k := m.user.Kubectl()
	k.Context, k.Timeout = kubeContext, 5*time.Minute
	exec := func(ns, command string) (string, error) {
		res, err := k.Run(ctx, "exec", "-n", ns, execPod, "-c", "c", "--", "sh", "-c", command)
		return res.Stdout, err
	}
	recDir := filepath.Join(m.coord.Dir, "data", "recordings")
	// KWOK learns of the exec rules, and the agent of the assignments,
	// soon: a session in execRecorded then leaves a recording.
	if err := harness.Eventually(ctx, time.Minute, func(context.Context) error {
		if _, err := exec("default", "true"); err != nil {
			return err
		}
		if _, err := exec(execRecorded, "true"); err != nil {
			return err
		}
		if len(casts(recDir)) == 0 {
			return fmt.Errorf("no recording yet")
		}
		return nil
	}); err != nil {
		return fmt.Errorf("exec never worked, or was never recorded: %w", err)
	}
	stream := fmt.Sprintf("head -c %d /dev/zero | tr '\\0' x", execStreamBytes)
	// One stream unmeasured first: the first ones through a fresh mesh
	// are slower, which would count against the one measured first.
	if _, err := exec("default", stream); err != nil {
		return err
	}
	run := func(label, ns string) (float64, error) {
		// The last run's recording is shipped first: the overhead
		// measured is the session's, not the upload's beside it.
		stored := len(casts(recDir))
		if err := harness.Eventually(ctx, time.Minute, func(context.Context) error {
			if n := len(casts(recDir)); n != stored || len(casts(filepath.Join(m.agentDir, "audit", "recordings"))) > 0 {
				stored = n
				return fmt.Errorf("recordings still being shipped")
			}
			return nil
		}); err != nil {
			return 0, err
		}
		start := time.Now()
		out, err := exec(ns, stream)
		d := time.Since(start)
		if err != nil {
			return 0, err
		}
		if len(out) != execStreamBytes {
			return 0, fmt.Errorf("exec stream %s: %d bytes, want %d", label, len(out), execStreamBytes)
		}
		return float64(execStreamBytes) * 8 / 1e6 / d.Seconds(), nil
	}
	var offs, ons, overheads []float64
	for i := range max(f.transferRun, 1) {
		off, err := run("off", "default")
		if err != nil {
			return err
		}
		on, err := run("on", execRecorded)
		if err != nil {
			return err
		}
		offs, ons, overheads = append(offs, off), append(ons, on), append(overheads, (off/on-1)*100)
		progress("exec: stream run %d: %.0f Mbit/s with recording off, %.0f on", i+1, off, on)
	}
	report("exec_throughput_mbps_off", median(offs), "Mbit/s")
	report("exec_throughput_mbps_on", median(ons), "Mbit/s")
	report("recording_overhead_pct", median(overheads), "%")

	const lines = `i=0; while [ $i -lt 2000 ]; do echo "line $i of an interactive session"; i=$((i+1)); done`
	out, err := exec(execRecorded, lines)
	if err != nil {
		return err
	}
	var size int64
	if err := harness.Eventually(ctx, time.Minute, func(context.Context) error {
		for _, p := range casts(recDir) {
			if h, err := castHeader(p); err == nil && slices.Contains(h.Session.Command, lines) {
				fi, err := os.Stat(p)
				if err != nil {
					return err
				}
				size = fi.Size()
				return nil
			}
		}
		return fmt.Errorf("the interactive session's recording is not at the coordinator yet")
	}); err != nil {
		return err
	}
	report("recording_bytes_per_output_byte", float64(size)/float64(len(out)), "bytes/byte")
	return nil
}

// castHeader reads the header of the recording at path.
func castHeader(path string) (proto.RecordingHeader, error) {
	f, err := os.Open(path)
	if err != nil {
		return proto.RecordingHeader{}, err
	}
	defer f.Close()
	line, err := bufio.NewReaderSize(f, 16<<10).ReadSlice('\n')
	if err != nil {
		return proto.RecordingHeader{}, err
	}
	return proto.ParseRecordingHeader(line)
}

// casts lists the recordings stored in dir.
func casts(dir string) []string {
	ms, _ := filepath.Glob(filepath.Join(dir, "*.cast"))
	return ms
}
