package agent

import (
	"net/http"
	"net/url"
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
	// bad is set when the path is one the apiserver cannot make sense
	// of, or one that layers may read differently: a "." or ".."
	// segment, an empty segment (//) anywhere but at the end, an encoded
	// slash, or the legacy /proxy/ verb prefix. Such a request matches
	// no grant that limits what it touches.
	bad bool
	// upgrade is set when the request asks to switch protocols.
	upgrade bool
}

// streamSubresources are the pod subresources whose connections kubectl
// opens with an upgrade (exec, attach, port-forward); over websocket it
// asks with GET.
var streamSubresources = []string{"exec", "attach", "portforward"}

// proxyResources are the core resources with a proxy subresource, which
// carries whatever the proxied server speaks, upgrades included.
var proxyResources = []string{"pods", "services", "nodes"}

// parseRequestInfo reads r's path, method and query. Non-resource paths
// (/version, /healthz, /openapi/..., /api, /apis) have a lowercase HTTP
// verb and no resource.
//
// An upgrade to pods/exec, pods/attach or pods/portforward asked with GET
// (websocket) has the verb create, as its SPDY form (POST) does and as the
// apiserver also demands; otherwise a role limited to reading could open
// a shell. An upgrade on the proxy subresources keeps the verb of its
// method, as the apiserver authorizes it.
func parseRequestInfo(r *http.Request) requestInfo {
	ri, err := requestInfos.NewRequestInfo(r)
	info := requestInfo{RequestInfo: ri, bad: err != nil}
	if !cleanPath(r.URL) || ri.IsResourceRequest && ri.Verb == "proxy" {
		info.bad = true
	}
	_, info.upgrade, _ = upgradeOf(r.Header)
	if info.upgrade && ri.IsResourceRequest && ri.Verb == "get" && ri.APIGroup == "" &&
		ri.Resource == "pods" && slices.Contains(streamSubresources, ri.Subresource) {
		ri.Verb = "create"
	}
	return info
}

// upgradable reports whether info names a path whose connections use an
// upgrade: pods/exec, pods/attach, pods/portforward and the proxy
// subresources of pods, services and nodes, asked with GET or POST.
// Elsewhere (watches, logs, non-resource URLs) the apiserver serves
// plain HTTP to kubectl, and an upgrade is refused, so that no protocol
// switch is ever authorized as something else.
func upgradable(info requestInfo) bool {
	if !info.IsResourceRequest || info.bad || info.APIGroup != "" || info.Name == "" {
		return false
	}
	if info.Verb != "get" && info.Verb != "create" {
		return false
	}
	switch info.Subresource {
	case "exec", "attach", "portforward":
		return info.Resource == "pods"
	case "proxy":
		return slices.Contains(proxyResources, info.Resource)
	}
	return false
}

// cleanPath reports whether u's path has no "." or ".." segment, no empty
// segment but a trailing slash, and no encoded slash. Go's ServeMux, a
// front proxy or the apiserver's own routing may each read such a path
// differently from its authorizer.
func cleanPath(u *url.URL) bool {
	p := u.Path
	if !strings.HasPrefix(p, "/") {
		return false
	}
	if strings.Contains(strings.ToLower(u.RawPath), "%2f") {
		return false
	}
	segs := strings.Split(p[1:], "/")
	for i, seg := range segs {
		if seg == "." || seg == ".." || seg == "" && i < len(segs)-1 {
			return false
		}
	}
	return true
}
