package cli

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
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
	// Unstructured objects from apimachinery, which the binary links
	// already: the typed core/v1 package would add about 5 MB for two
	// objects.
	meta := func(name string) map[string]any {
		l := map[string]any{}
		for k, v := range labels {
			l[k] = v
		}
		return map[string]any{"name": name, "namespace": agentNamespace, "labels": l}
	}
	secret := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
		"metadata": meta(joinTokenName),
		"data":     map[string]any{joinTokenKey: base64.StdEncoding.EncodeToString([]byte(token))},
	}}
	data := map[string]any{coordURLKey: coordURL}
	if len(caPEM) > 0 {
		data[caKey] = string(caPEM)
	}
	cm := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": meta(agentConfName),
		"data":     data,
	}}
	var out bytes.Buffer
	fmt.Fprintf(&out, "# clustral agent inputs for cluster %s. The Secret holds its join token: do not commit it.\n", cluster)
	for i, obj := range []*unstructured.Unstructured{secret, cm} {
		b, err := yaml.Marshal(obj.Object)
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
