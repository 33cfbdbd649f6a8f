package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// controllers are the kube-controller-manager controllers the harness
// runs: enough for built-in aggregated ClusterRoles (view, edit, admin),
// namespace deletion, default service accounts and their tokens, garbage
// collection and the kube-root-ca.crt config maps.
const controllers = "clusterrole-aggregation-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,garbage-collector-controller,root-ca-certificate-publisher-controller"

// ControllerManager is a kube-controller-manager running a few
// controllers against an APIServer.
type ControllerManager struct {
	// LogPath is the file receiving kube-controller-manager's output.
	LogPath string

	component
}

// StartControllerManager starts kube-controller-manager for api, with its
// files under dir, and waits until the built-in "view" ClusterRole has
// been aggregated. The caller must call Close.
func StartControllerManager(ctx context.Context, dir string, api *APIServer) (*ControllerManager, error) {
	bin, dir, err := componentDir("kube-controller-manager", dir)
	if err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := api.WriteKubeconfig(kubeconfig, "kube-controller-manager", api.AdminToken); err != nil {
		return nil, fmt.Errorf("start kube-controller-manager: %w", err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, api.CAPEM, 0o644); err != nil {
		return nil, fmt.Errorf("start kube-controller-manager: %w", err)
	}
	cm := &ControllerManager{LogPath: filepath.Join(dir, "kube-controller-manager.log")}
	client := api.Client()
	err = onFreePorts(1, func(ports []int) error {
		args := []string{
			"--kubeconfig=" + kubeconfig,
			"--authentication-kubeconfig=" + kubeconfig,
			"--authorization-kubeconfig=" + kubeconfig,
			"--controllers=" + controllers,
			"--service-account-private-key-file=" + api.ServiceAccountKey,
			"--root-ca-file=" + caFile,
			"--use-service-account-credentials=false",
			"--bind-address=127.0.0.1",
			fmt.Sprintf("--secure-port=%d", ports[0]),
			"--cert-dir=" + filepath.Join(dir, "certs"),
			"--leader-elect=false",
			"--profiling=false",
		}
		p, err := StartProcess("kube-controller-manager", bin, args, EnvironWithout("KUBECONFIG="), cm.LogPath)
		if err != nil {
			return err
		}
		err = p.waitReady(ctx, time.Minute, func(ctx context.Context) error {
			r, err := client.RbacV1().ClusterRoles().Get(ctx, "view", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if len(r.Rules) == 0 {
				return fmt.Errorf("ClusterRole view has no rules yet")
			}
			return nil
		})
		if err != nil {
			return err
		}
		cm.proc = p
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("start kube-controller-manager: %w", err)
	}
	return cm, nil
}
