package agent

import (
	"net/http"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apiserver/pkg/endpoints/request"
)

// requestInfos parses requests exactly as kube-apiserver does before it
// authorizes them: the same factory with the same API prefixes. Sharing
// the apiserver's parser means the agent's restrictions and the
// apiserver's RBAC see the same verb, group, resource, namespace and name
// for any path; a parser of our own could be steered to disagree.
var requestInfos = &request.RequestInfoFactory{
	APIPrefixes:          sets.NewString("api", "apis"),
	GrouplessAPIPrefixes: sets.NewString("api"),
}

// requestInfo is what a Kubernetes API request asks for.
type requestInfo struct {
	*request.RequestInfo
	// bad is set when the path is a resource path the apiserver cannot
	// make sense of, or has dot segments; such a request matches no
	// restricted grant.
	bad bool
}

// streamSubresources are the subresources whose connections kubectl opens
// with an upgrade; over websocket it asks with GET.
var streamSubresources = []string{"exec", "attach", "portforward"}

// parseRequestInfo reads r's path, method and query. Non-resource paths
// (/version, /healthz, /openapi/..., /api, /apis) have a lowercase HTTP
// verb and no resource.
//
// An upgrade to pods/exec, pods/attach or pods/portforward asked with GET
// (websocket) has the verb create, as its SPDY form (POST) does and as the
// apiserver also demands; otherwise a role limited to reading could open
// a shell.
func parseRequestInfo(r *http.Request) requestInfo {
	ri, err := requestInfos.NewRequestInfo(r)
	info := requestInfo{RequestInfo: ri, bad: err != nil}
	if ri.IsResourceRequest && hasDotSegment(r.URL.Path) {
		info.bad = true
	}
	if ri.IsResourceRequest && ri.Verb == "get" && ri.Resource == "pods" && slices.Contains(streamSubresources, ri.Subresource) {
		if _, upgrade, _ := upgradeOf(r.Header); upgrade {
			ri.Verb = "create"
		}
	}
	return info
}

// hasDotSegment reports whether p has a "." or ".." segment, which a
// router that cleans paths would read differently from the apiserver's
// authorizer.
func hasDotSegment(p string) bool {
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}
