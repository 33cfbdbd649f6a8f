package main

import (
	"bytes"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// The objects of deploy/agent/base that hold an installation's inputs;
// the DaemonSet reads them by these names.
const (
	agentNamespace = "clustral"
	joinTokenName  = "clustral-join-token" // Secret, key joinTokenKey
	joinTokenKey   = "token"
	agentConfName  = "clustral-agent" // ConfigMap, keys coordinatorURLKey and caKey
	coordURLKey    = "coordinator-url"
	caKey          = "ca.crt"
)

// agentManifest returns the Secret with a cluster's join token and the
// ConfigMap with the coordinator's URL (and, if caPEM is set, the CA the
// agents trust for it) as a YAML stream for `kubectl apply -f -`, next to
// deploy/agent, which creates the namespace.
func agentManifest(cluster, token, coordURL string, caPEM []byte) ([]byte, error) {
	labels := map[string]string{
		"app.kubernetes.io/part-of": "clustral",
		"app.kubernetes.io/name":    "clustral-agent",
		"clustral.dev/cluster":      cluster,
	}
	secret := &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: joinTokenName, Namespace: agentNamespace, Labels: labels},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{joinTokenKey: []byte(token)},
	}
	cm := &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: agentConfName, Namespace: agentNamespace, Labels: labels},
		Data:       map[string]string{coordURLKey: coordURL},
	}
	if len(caPEM) > 0 {
		cm.Data[caKey] = string(caPEM)
	}
	var out bytes.Buffer
	fmt.Fprintf(&out, "# clustral agent inputs for cluster %s. The Secret holds its join token: do not commit it.\n", cluster)
	for i, obj := range []any{secret, cm} {
		b, err := yaml.Marshal(obj)
		if err != nil {
			return nil, fmt.Errorf("agent manifest: %w", err)
		}
		if i > 0 {
			out.WriteString("---\n")
		}
		out.Write(b)
	}
	return out.Bytes(), nil
}

// readCA reads the PEM bundle the CLI trusts for the coordinator, if any.
func readCA(caFile string) ([]byte, error) {
	if caFile == "" {
		caFile = os.Getenv("CLUSTRAL_CA_FILE")
	}
	if caFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	return b, nil
}
