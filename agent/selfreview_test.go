package agent

import (
	"testing"

	"github.com/clustral/clustral/proto"
)

// TestSelfReviews: a role with limits still lets its holder ask the
// apiserver about themselves (kubectl auth can-i and auth whoami, and
// what k9s asks before it opens any view), and only that: reviews of
// other subjects, other verbs on the review resources and odd paths stay
// limited, and time windows still apply.
func TestSelfReviews(t *testing.T) {
	ns := proto.Restrictions{Namespaces: []string{"dev"}}
	tests := []struct {
		name           string
		rs             proto.Restrictions
		method, target string
		want           proto.ErrorCode // "" means allowed
	}{
		{"access review, namespace limit", ns, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", ""},
		{"rules review, namespace limit", ns, "POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", ""},
		{"whoami, namespace limit", ns, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", ""},
		{"access review, read-only verbs", proto.Restrictions{Verbs: []string{"get", "list", "watch"}}, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", ""},
		{"access review, core group only", proto.Restrictions{APIGroups: []string{""}, Resources: []string{"pods"}}, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", ""},
		{"access review, names", proto.Restrictions{ResourceNames: []string{"web"}}, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews?dryRun=All", ""},
		{"access review, older version", ns, "POST", "/apis/authorization.k8s.io/v1beta1/selfsubjectaccessreviews", ""},

		{"review of another subject", ns, "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", proto.CodeNamespaceNotAllowed},
		{"local review of another subject", proto.Restrictions{Namespaces: []string{"dev"}, Resources: []string{"pods"}}, "POST", "/apis/authorization.k8s.io/v1/namespaces/dev/localsubjectaccessreviews", proto.CodeResourceNotAllowed},
		{"token review", ns, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", proto.CodeNamespaceNotAllowed},
		{"not create", ns, "GET", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", proto.CodeNamespaceNotAllowed},
		{"review by name", ns, "PUT", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews/x", proto.CodeNamespaceNotAllowed},
		{"namespaced path", proto.Restrictions{Namespaces: []string{"prod"}}, "POST", "/apis/authorization.k8s.io/v1/namespaces/dev/selfsubjectaccessreviews", proto.CodeNamespaceNotAllowed},
		{"same name in another group", ns, "POST", "/apis/example.com/v1/selfsubjectaccessreviews", proto.CodeNamespaceNotAllowed},
		{"dot segment", ns, "POST", "/apis/authorization.k8s.io/v1/x/../selfsubjectaccessreviews", proto.CodeResourceNotAllowed},
		{"outside the time window", proto.Restrictions{Namespaces: []string{"dev"}, TimeWindows: []proto.TimeWindow{{Start: "00:00", End: "01:00"}}}, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", proto.CodeOutsideTimeWindow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			peer := device(1, "alice@example.com", restricted("r", tt.rs, "g"))
			_, d := authorize("prod", peer, reqInfo(t, tt.method, tt.target), t0)
			var got proto.ErrorCode
			if d != nil {
				got = d.code
			}
			if got != tt.want {
				t.Errorf("%s %s: code %q, want %q (%v)", tt.method, tt.target, got, tt.want, d)
			}
		})
	}
}
