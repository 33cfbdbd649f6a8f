package agent

import (
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apiserver/pkg/endpoints/request"

	"github.com/clustral/clustral/proto"
)

// reqInfo parses a request for method and target (path and query).
func reqInfo(tb testing.TB, method, target string, header ...string) requestInfo {
	tb.Helper()
	r, err := http.NewRequest(method, "https://prod.clustral.internal"+target, nil)
	if err != nil {
		tb.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Add(header[i], header[i+1])
	}
	return parseRequestInfo(r)
}

// TestParseRequestInfo checks the parse against the Kubernetes API
// conventions (https://kubernetes.io/docs/reference/access-authn-authz/authorization/#determine-the-request-verb).
func TestParseRequestInfo(t *testing.T) {
	type want struct {
		resource                        bool
		verb, group, res, sub, ns, name string
		bad                             bool
	}
	upgrade := []string{"Connection", "Upgrade", "Upgrade", "websocket"}
	tests := []struct {
		method, target string
		header         []string
		want           want
	}{
		{"GET", "/api/v1/namespaces/default/pods", nil, want{true, "list", "", "pods", "", "default", "", false}},
		{"HEAD", "/api/v1/namespaces/default/pods", nil, want{true, "list", "", "pods", "", "default", "", false}},
		{"GET", "/api/v1/namespaces/default/pods?watch=true", nil, want{true, "watch", "", "pods", "", "default", "", false}},
		{"GET", "/api/v1/namespaces/default/pods?watch=1", nil, want{true, "watch", "", "pods", "", "default", "", false}},
		{"GET", "/api/v1/namespaces/default/pods?watch=false", nil, want{true, "list", "", "pods", "", "default", "", false}},
		{"GET", "/api/v1/pods?watch=true&fieldSelector=metadata.name%3Dweb-1", nil, want{true, "watch", "", "pods", "", "", "web-1", false}},
		{"GET", "/api/v1/namespaces/dev/pods?fieldSelector=metadata.name%3Dweb-1", nil, want{true, "list", "", "pods", "", "dev", "web-1", false}},
		{"GET", "/api/v1/watch/pods", nil, want{true, "watch", "", "pods", "", "", "", false}},
		{"GET", "/api/v1/watch/namespaces/dev/pods", nil, want{true, "watch", "", "pods", "", "dev", "", false}},
		{"GET", "/api/v1/watch/namespaces/dev/pods/web-1", nil, want{true, "watch", "", "pods", "", "dev", "web-1", false}},
		{"GET", "/apis/apps/v1/watch/namespaces/dev/deployments", nil, want{true, "watch", "apps", "deployments", "", "dev", "", false}},
		{"GET", "/api/v1/namespaces/default/pods/web-1", nil, want{true, "get", "", "pods", "", "default", "web-1", false}},
		{"GET", "/api/v1/namespaces/default/pods/web-1/log?follow=true", nil, want{true, "get", "", "pods", "log", "default", "web-1", false}},
		{"POST", "/api/v1/namespaces/default/pods/web-1/exec?command=sh", nil, want{true, "create", "", "pods", "exec", "default", "web-1", false}},
		{"GET", "/api/v1/namespaces/default/pods/web-1/exec?command=sh", upgrade, want{true, "create", "", "pods", "exec", "default", "web-1", false}},
		{"GET", "/api/v1/namespaces/default/pods/web-1/attach", upgrade, want{true, "create", "", "pods", "attach", "default", "web-1", false}},
		{"GET", "/api/v1/namespaces/default/pods/web-1/portforward", upgrade, want{true, "create", "", "pods", "portforward", "default", "web-1", false}},
		{"POST", "/api/v1/namespaces/default/pods/web-1/portforward", nil, want{true, "create", "", "pods", "portforward", "default", "web-1", false}},
		{"GET", "/api/v1/namespaces/default/pods/web-1/proxy/metrics", nil, want{true, "get", "", "pods", "proxy", "default", "web-1", false}},
		{"GET", "/api/v1/namespaces/kube-system", nil, want{true, "get", "", "namespaces", "", "kube-system", "kube-system", false}},
		{"PUT", "/api/v1/namespaces/kube-system/finalize", nil, want{true, "update", "", "namespaces", "finalize", "kube-system", "kube-system", false}},
		{"GET", "/api/v1/namespaces/kube-system/status", nil, want{true, "get", "", "namespaces", "status", "kube-system", "kube-system", false}},
		{"GET", "/api/v1/namespaces", nil, want{true, "list", "", "namespaces", "", "", "", false}},
		{"POST", "/api/v1/namespaces", nil, want{true, "create", "", "namespaces", "", "", "", false}},
		{"DELETE", "/api/v1/namespaces/x", nil, want{true, "delete", "", "namespaces", "", "x", "x", false}},
		{"DELETE", "/apis/apps/v1/namespaces/x/deployments", nil, want{true, "deletecollection", "apps", "deployments", "", "x", "", false}},
		{"DELETE", "/apis/apps/v1/namespaces/x/deployments/d", nil, want{true, "delete", "apps", "deployments", "", "x", "d", false}},
		{"PATCH", "/apis/apps/v1/namespaces/x/deployments/d/scale", nil, want{true, "patch", "apps", "deployments", "scale", "x", "d", false}},
		{"PUT", "/apis/apps/v1/namespaces/x/deployments/d/status", nil, want{true, "update", "apps", "deployments", "status", "x", "d", false}},
		{"POST", "/apis/apps/v1/namespaces/x/deployments", nil, want{true, "create", "apps", "deployments", "", "x", "", false}},
		{"GET", "/api/v1/nodes", nil, want{true, "list", "", "nodes", "", "", "", false}},
		{"GET", "/api/v1/nodes/n1", nil, want{true, "get", "", "nodes", "", "", "n1", false}},
		{"GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin", nil, want{true, "get", "rbac.authorization.k8s.io", "clusterroles", "", "", "admin", false}},
		{"POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", nil, want{true, "create", "authorization.k8s.io", "selfsubjectaccessreviews", "", "", "", false}},
		{"GET", "/api/v1/namespaces/dev/pods/../../kube-system/pods", nil, want{true, "get", "", "pods", "..", "dev", "..", true}},
		{"GET", "/api/v1/watch", nil, want{true, "get", "", "", "", "", "", true}},
		// Non-resource URLs: the lowercase HTTP method, no resource.
		{"GET", "/version", nil, want{false, "get", "", "", "", "", "", false}},
		{"GET", "/api", nil, want{false, "get", "", "", "", "", "", false}},
		{"GET", "/api/v1", nil, want{false, "get", "", "", "", "", "", false}},
		{"GET", "/apis", nil, want{false, "get", "", "", "", "", "", false}},
		{"GET", "/apis/apps", nil, want{false, "get", "", "", "", "", "", false}},
		{"GET", "/apis/apps/v1", nil, want{false, "get", "", "", "", "", "", false}},
		{"GET", "/openapi/v3/apis/apps/v1", nil, want{false, "get", "", "", "", "", "", false}},
		{"GET", "/healthz", nil, want{false, "get", "", "", "", "", "", false}},
		{"POST", "/version", nil, want{false, "post", "", "", "", "", "", false}},
		{"GET", "/", nil, want{false, "get", "", "", "", "", "", false}},
	}
	for _, tt := range tests {
		info := reqInfo(t, tt.method, tt.target, tt.header...)
		got := want{info.IsResourceRequest, info.Verb, info.APIGroup, info.Resource, info.Subresource, info.Namespace, info.Name, info.bad}
		if got != tt.want {
			t.Errorf("%s %s = %+v, want %+v", tt.method, tt.target, got, tt.want)
		}
	}
}

// apiserverFactory is the request info factory as kube-apiserver builds
// it (NewRequestInfoResolver in k8s.io/apiserver/pkg/server): every API
// prefix is /apis plus the legacy /api, and the legacy ones have no
// group.
func apiserverFactory() *request.RequestInfoFactory {
	api, legacy := sets.NewString(strings.Trim("/apis", "/")), sets.NewString()
	for _, p := range []string{"/api"} {
		api.Insert(strings.Trim(p, "/"))
		legacy.Insert(strings.Trim(p, "/"))
	}
	return &request.RequestInfoFactory{APIPrefixes: api, GrouplessAPIPrefixes: legacy}
}

// TestRequestInfoMatchesAPIServer compares the agent's reading of a
// corpus of requests with the apiserver's factory: every field must be
// the same (but the verb create of an upgrade to pods/exec, attach or
// portforward, which is stricter), or the widest role with limits must
// refuse the request. integration/requestinfo compares with a running
// apiserver's audit log.
func TestRequestInfoMatchesAPIServer(t *testing.T) {
	widest := &proto.Restrictions{
		APIGroups: []string{"*"}, Verbs: []string{"*"}, NonResourceURLs: []string{"*"},
		Resources: []string{"*", "*/exec", "*/attach", "*/portforward", "*/proxy", "*/ephemeralcontainers", "serviceaccounts/token"},
	}
	ns := "/api/v1/namespaces/dev"
	var targets []string
	for _, sub := range []string{"", "/status", "/log", "/exec", "/attach", "/portforward", "/proxy", "/proxy/a/b", "/binding", "/eviction", "/ephemeralcontainers", "/resize"} {
		targets = append(targets, ns+"/pods/p"+sub)
	}
	targets = append(targets,
		ns+"/pods", ns+"/services/s/proxy/x", ns+"/serviceaccounts/sa/token", ns+"/replicationcontrollers/rc/scale",
		"/api/v1/nodes/n1/proxy/exec/dev/p/c", "/api/v1/namespaces/dev/finalize", "/api/v1/namespaces/dev/status",
		"/apis/apps/v1/namespaces/dev/deployments/d/scale", "/apis/example.com/v1/namespaces/dev/widgets/w/status",
		"/apis/example.com/v1/gadgets/g", ns+"/pods?watch=1&fieldSelector=metadata.name%3Dp", "/api/v1/watch/namespaces/dev/pods/p",
		"/api/v1/namespaces/def%61ult/pods", ns+"/pods/a%2Fb", ns+"/pods/%2e%2e/secrets", "/api%2Fv1/namespaces/dev/pods",
		ns+"/pods/../../kube-system/secrets", ns+"/./pods", "//api/v1/namespaces/dev/pods", "/api/v1/namespaces//pods",
		ns+"/pods/", "/api/v1/proxy/nodes/n1", "/api/v1/watch", "/apis/x/v1/watch",
		"/", "/api", "/api/v1", "/apis", "/apis/apps/v1", "/version", "/openapi/v2", "/metrics", "/logs/", "//metrics", "/metrics/../logs/",
	)
	factory := apiserverFactory()
	for _, target := range targets {
		for _, method := range []string{"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"} {
			for _, upgrade := range []bool{false, true} {
				r, err := http.NewRequest(method, "https://prod.clustral.internal"+target, nil)
				if err != nil {
					t.Fatal(err)
				}
				if upgrade {
					r.Header.Set("Connection", "Upgrade")
					r.Header.Set("Upgrade", "websocket")
				}
				info := parseRequestInfo(r)
				want, wantErr := factory.NewRequestInfo(r)
				got := *info.RequestInfo
				if upgrade && got.Verb == "create" && want.Verb == "get" && got.Resource == "pods" &&
					slices.Contains([]string{"exec", "attach", "portforward"}, got.Subresource) {
					got.Verb = "get"
				}
				if reflect.DeepEqual(got, *want) && wantErr == nil && !info.bad {
					continue
				}
				if st := check(widest, info, t0); st != stageResource {
					t.Errorf("%s %s (upgrade %v): agent %+v, apiserver %+v (%v); widest limits give stage %d, want a refusal",
						method, target, upgrade, *info.RequestInfo, *want, wantErr, st)
				}
			}
		}
	}
}

// TestDiscoveryAllowed: kubectl needs discovery and the OpenAPI documents
// for any role, so restrictions of resources, namespaces and verbs do not
// apply to them.
func TestDiscoveryAllowed(t *testing.T) {
	rs := &proto.Restrictions{Namespaces: []string{"dev"}, Resources: []string{"pods"}, Verbs: []string{"get"}}
	for _, target := range []string{"/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1", "/version", "/openapi/v2", "/openapi/v3/apis/apps/v1"} {
		if st := check(rs, reqInfo(t, "GET", target), t0); st != stageAllowed {
			t.Errorf("GET %s: stage %d, want allowed", target, st)
		}
	}
}

// FuzzRequestInfo feeds arbitrary methods, targets and upgrade requests
// through the parser, the restriction check and the proxy's upgrade rule,
// and checks what each of three roles with limits lets through:
//   - one limited to get/list/watch of pods and pods/log in namespace dev
//     allows exactly that, on clean paths, or discovery;
//   - one with resources * allows no sensitive subresource and no
//     non-resource URL but discovery and the one it lists;
//   - no role allows a path that is not clean, except as discovery.
//
// It also checks that an upgrade passes only on the paths that use one,
// with the verb create for exec, attach and port-forward.
func FuzzRequestInfo(f *testing.F) {
	for _, s := range []string{
		"/api/v1/namespaces/dev/pods", "/api/v1/namespaces/dev/pods?watch=true", "/api/v1/watch/namespaces/dev/pods/x",
		"/api/v1/namespaces/dev/pods/x/exec", "/apis/apps/v1/namespaces/dev/deployments", "/api/v1/namespaces/dev",
		"/api/v1/namespaces/dev/pods/../../kube-system/pods", "/api/v1/namespaces//pods", "/apis/x/v1/watch",
		"/version", "/api", "/apis", "//api/v1/pods", "/api/v1/proxy/namespaces/dev/pods/x",
		"/api/v1/nodes/n1/proxy/exec/dev/web/c?command=sh", "/api/v1/namespaces/dev/services/s/proxy/",
		"/api/v1/namespaces/dev/serviceaccounts/sa/token", "/api/v1/namespaces/dev/pods/x/ephemeralcontainers",
		"/metrics", "/logs/", "/debug/pprof/profile", "/metrics/../logs/x", "/api/v1/namespaces/dev/pods/a%2Fb",
		"/api/v1/namespaces/dev/pods/x/log?follow=true", "/apis/example.com/v1/namespaces/dev/widgets/w/exec",
	} {
		f.Add("GET", s, false)
		f.Add("DELETE", s, false)
		f.Add("GET", s, true)
		f.Add("POST", s, true)
	}
	reader := &proto.Restrictions{
		Namespaces: []string{"dev"},
		APIGroups:  []string{""},
		Resources:  []string{"pods", "pods/log"},
		Verbs:      []string{"get", "list", "watch"},
	}
	star := &proto.Restrictions{Resources: []string{"*"}, NonResourceURLs: []string{"/metrics"}}
	f.Fuzz(func(t *testing.T, method, target string, upgrade bool) {
		u, err := url.ParseRequestURI(target)
		if err != nil || !strings.HasPrefix(target, "/") {
			return
		}
		r := &http.Request{Method: method, URL: u, Header: http.Header{}}
		if upgrade {
			r.Header.Set("Connection", "Upgrade")
			r.Header.Set("Upgrade", "websocket")
		}
		info := parseRequestInfo(r)
		if info.upgrade != upgrade {
			t.Fatalf("upgrade = %v, want %v", info.upgrade, upgrade)
		}
		if upgradable(info) {
			ok := info.IsResourceRequest && !info.bad && info.APIGroup == "" &&
				(info.Resource == "pods" && slices.Contains([]string{"exec", "attach", "portforward", "proxy"}, info.Subresource) ||
					(info.Resource == "services" || info.Resource == "nodes") && info.Subresource == "proxy")
			if !ok {
				t.Fatalf("%s %s: upgrade allowed on %+v", method, target, *info.RequestInfo)
			}
			if upgrade && info.Resource == "pods" && info.Subresource != "proxy" && info.Verb != "create" {
				t.Fatalf("%s %s: upgrade to pods/%s has verb %q, want create", method, target, info.Subresource, info.Verb)
			}
		}
		for _, rs := range []*proto.Restrictions{reader, star} {
			if check(rs, info, t0) != stageAllowed {
				continue
			}
			if !info.IsResourceRequest {
				if !discovery(info) && !(rs == star && info.Path == "/metrics") {
					t.Fatalf("%s %s: non-resource URL allowed by %+v", method, target, *rs)
				}
				continue
			}
			if info.bad || !cleanPath(u) {
				t.Fatalf("%s %s: unclean path allowed as %+v", method, target, *info.RequestInfo)
			}
			if proto.SensitiveSubresource(info.Resource, info.Subresource) {
				t.Fatalf("%s %s: sensitive %s/%s allowed by %+v", method, target, info.Resource, info.Subresource, *rs)
			}
			if rs == reader && (info.Namespace != "dev" || info.APIGroup != "" ||
				!(info.Resource == "pods" && (info.Subresource == "" || info.Subresource == "log")) ||
				!(info.Verb == "get" || info.Verb == "list" || info.Verb == "watch")) {
				t.Fatalf("%s %s allowed as %+v", method, target, *info.RequestInfo)
			}
		}
	})
}

func BenchmarkParseRequestInfo(b *testing.B) {
	for _, target := range []string{"/api/v1/namespaces/dev/pods/web-1", "/api/v1/namespaces/dev/pods?watch=true&resourceVersion=1"} {
		r, _ := http.NewRequest("GET", "https://x"+target, nil)
		b.Run(strings.Trim(strings.SplitN(target, "?", 2)[0], "/"), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				parseRequestInfo(r)
			}
		})
	}
}
