package deploy

import (
	"testing"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// sar asks kube-apiserver whether the installation's service account may
// do something, with the groups every service account has.
func sar(t *testing.T, in installation, ra authzv1.ResourceAttributes) bool {
	t.Helper()
	r, err := env.APIServer.Client().AuthorizationV1().SubjectAccessReviews().Create(t.Context(), &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{
			User:               in.user(),
			Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + in.Namespace, "system:authenticated"},
			ResourceAttributes: &ra,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SubjectAccessReview %+v: %v", ra, err)
	}
	return r.Status.Allowed
}

// sarCase is one question of the RBAC matrix and the answer the agent's
// least privilege requires.
type sarCase struct {
	name  string
	ra    authzv1.ResourceAttributes
	allow bool
}

// rbacMatrix is what every installation of the agent may and may not do
// as itself: impersonate users and groups, nothing else. The kustomize
// base and the Helm chart are both judged by it.
func rbacMatrix(in installation) []sarCase {
	ns := in.Namespace
	return []sarCase{
		{"impersonate users", authzv1.ResourceAttributes{Verb: "impersonate", Resource: "users"}, true},
		{"impersonate a named user", authzv1.ResourceAttributes{Verb: "impersonate", Resource: "users", Name: "alice@example.com"}, true},
		{"impersonate groups", authzv1.ResourceAttributes{Verb: "impersonate", Resource: "groups"}, true},
		{"impersonate system:masters", authzv1.ResourceAttributes{Verb: "impersonate", Resource: "groups", Name: "system:masters"}, true},

		{"impersonate serviceaccounts", authzv1.ResourceAttributes{Verb: "impersonate", Resource: "serviceaccounts"}, false},
		{"impersonate a service account", authzv1.ResourceAttributes{Verb: "impersonate", Resource: "serviceaccounts", Namespace: "kube-system", Name: "default"}, false},
		{"impersonate uids", authzv1.ResourceAttributes{Verb: "impersonate", Group: "authentication.k8s.io", Resource: "uids"}, false},
		{"impersonate userextras", authzv1.ResourceAttributes{Verb: "impersonate", Group: "authentication.k8s.io", Resource: "userextras", Subresource: "scopes"}, false},
		{"impersonate users in another group", authzv1.ResourceAttributes{Verb: "impersonate", Group: "example.com", Resource: "users"}, false},
		{"get users", authzv1.ResourceAttributes{Verb: "get", Resource: "users"}, false},
		{"list pods", authzv1.ResourceAttributes{Verb: "list", Resource: "pods"}, false},
		{"list pods in its namespace", authzv1.ResourceAttributes{Verb: "list", Resource: "pods", Namespace: ns}, false},
		{"get its join token", authzv1.ResourceAttributes{Verb: "get", Resource: "secrets", Namespace: ns, Name: in.TokenSecret}, false},
		{"list secrets in kube-system", authzv1.ResourceAttributes{Verb: "list", Resource: "secrets", Namespace: "kube-system"}, false},
		{"watch configmaps", authzv1.ResourceAttributes{Verb: "watch", Resource: "configmaps", Namespace: ns}, false},
		{"create pods", authzv1.ResourceAttributes{Verb: "create", Resource: "pods", Namespace: ns}, false},
		{"create pods/exec", authzv1.ResourceAttributes{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: ns}, false},
		{"create deployments", authzv1.ResourceAttributes{Verb: "create", Group: "apps", Resource: "deployments", Namespace: "default"}, false},
		{"patch its daemonset", authzv1.ResourceAttributes{Verb: "patch", Group: "apps", Resource: "daemonsets", Namespace: ns, Name: in.DaemonSet}, false},
		{"create service account tokens", authzv1.ResourceAttributes{Verb: "create", Resource: "serviceaccounts", Subresource: "token", Namespace: ns, Name: in.ServiceAccount}, false},
		{"create tokenreviews", authzv1.ResourceAttributes{Verb: "create", Group: "authentication.k8s.io", Resource: "tokenreviews"}, false},
		{"create subjectaccessreviews", authzv1.ResourceAttributes{Verb: "create", Group: "authorization.k8s.io", Resource: "subjectaccessreviews"}, false},
		{"create certificatesigningrequests", authzv1.ResourceAttributes{Verb: "create", Group: "certificates.k8s.io", Resource: "certificatesigningrequests"}, false},
		{"create clusterrolebindings", authzv1.ResourceAttributes{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "clusterrolebindings"}, false},
		{"bind clusterroles", authzv1.ResourceAttributes{Verb: "bind", Group: "rbac.authorization.k8s.io", Resource: "clusterroles", Name: "cluster-admin"}, false},
		{"escalate clusterroles", authzv1.ResourceAttributes{Verb: "escalate", Group: "rbac.authorization.k8s.io", Resource: "clusterroles"}, false},
		{"get nodes/proxy", authzv1.ResourceAttributes{Verb: "get", Resource: "nodes", Subresource: "proxy"}, false},
		{"delete its namespace", authzv1.ResourceAttributes{Verb: "delete", Resource: "namespaces", Name: ns}, false},
		{"everything", authzv1.ResourceAttributes{Verb: "*", Group: "*", Resource: "*"}, false},
	}
}

// checkRBAC has kube-apiserver answer rbacMatrix for the installation's
// service account, one subtest per question.
func checkRBAC(t *testing.T, in installation) {
	t.Helper()
	for _, tt := range rbacMatrix(in) {
		t.Run(tt.name, func(t *testing.T) {
			if got := sar(t, in, tt.ra); got != tt.allow {
				t.Errorf("%s may %s %s/%s %s in %q: allowed = %v, want %v",
					in.user(), tt.ra.Verb, tt.ra.Group, tt.ra.Resource, tt.ra.Subresource, tt.ra.Namespace, got, tt.allow)
			}
		})
	}
}
