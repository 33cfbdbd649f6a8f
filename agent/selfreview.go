package agent

// selfReviews are the API resources through which a caller asks the
// apiserver about itself: what it may do (kubectl auth can-i, and what
// k9s and other dashboards ask before they open a view) and who it is
// (kubectl auth whoami). They are created and answered, never stored,
// and they answer only for the identity the agent impersonates.
var selfReviews = map[string][]string{
	"authorization.k8s.io":  {"selfsubjectaccessreviews", "selfsubjectrulesreviews"},
	"authentication.k8s.io": {"selfsubjectreviews"},
}

// selfReview reports whether info creates a self review (see
// selfReviews): a cluster-scoped create of one of those resources, by a
// path the apiserver reads as the agent does. Like discovery, a role's
// limits do not refuse it (time windows do): the answer is the cluster's
// RBAC for the impersonated user and groups, and the limits still judge
// every request the caller then makes.
func selfReview(info requestInfo) bool {
	if !info.IsResourceRequest || info.bad || info.Verb != "create" ||
		info.Namespace != "" || info.Name != "" || info.Subresource != "" {
		return false
	}
	for _, r := range selfReviews[info.APIGroup] {
		if info.Resource == r {
			return true
		}
	}
	return false
}
