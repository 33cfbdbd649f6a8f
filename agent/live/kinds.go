package live

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Kind is a resource the live view follows: one shared informer, so one
// upstream watch, per Kind.
type Kind struct {
	// Name is the resource as kubectl names it with its group, e.g.
	// "pods" or "deployments.apps"; events carry it as LiveEvent.Kind.
	Name       string
	GVR        schema.GroupVersionResource
	Namespaced bool
}

// knownKinds are the kinds the live view can follow, in display order.
var knownKinds = []Kind{
	{"namespaces", schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, false},
	{"nodes", schema.GroupVersionResource{Version: "v1", Resource: "nodes"}, false},
	{"pods", schema.GroupVersionResource{Version: "v1", Resource: "pods"}, true},
	{"deployments.apps", schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, true},
	{"replicasets.apps", schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "replicasets"}, true},
	{"statefulsets.apps", schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "statefulsets"}, true},
	{"daemonsets.apps", schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}, true},
	{"jobs.batch", schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"}, true},
	{"cronjobs.batch", schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "cronjobs"}, true},
	{"services", schema.GroupVersionResource{Version: "v1", Resource: "services"}, true},
	{"ingresses.networking.k8s.io", schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "ingresses"}, true},
	{"events", schema.GroupVersionResource{Version: "v1", Resource: "events"}, true},
	{"configmaps", schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}, true},
	{"persistentvolumeclaims", schema.GroupVersionResource{Version: "v1", Resource: "persistentvolumeclaims"}, true},
	{"secrets", schema.GroupVersionResource{Version: "v1", Resource: "secrets"}, true},
}

// DefaultKinds are the kinds followed when none are configured. Secrets
// are never among them: they must be asked for by name.
var DefaultKinds = []string{
	"namespaces", "nodes", "pods", "deployments.apps", "replicasets.apps",
	"statefulsets.apps", "daemonsets.apps", "jobs.batch", "cronjobs.batch",
	"services", "ingresses.networking.k8s.io", "events",
}

// ParseKinds resolves names (as in Kind.Name; a core resource may also
// be written "pods.core" and an apps resource without its group, e.g.
// "deployments") to kinds, without repeats, in the order given. An empty
// list means DefaultKinds.
func ParseKinds(names []string) ([]Kind, error) {
	if len(names) == 0 {
		names = DefaultKinds
	}
	var out []Kind
	for _, n := range names {
		n = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n)), ".core")
		i := slices.IndexFunc(knownKinds, func(k Kind) bool {
			return k.Name == n || k.GVR.Resource == n
		})
		if i < 0 {
			known := make([]string, len(knownKinds))
			for j, k := range knownKinds {
				known[j] = k.Name
			}
			return nil, fmt.Errorf("live view: unknown kind %q: use one of %s", n, strings.Join(known, ", "))
		}
		if !slices.ContainsFunc(out, func(k Kind) bool { return k.Name == knownKinds[i].Name }) {
			out = append(out, knownKinds[i])
		}
	}
	return out, nil
}
