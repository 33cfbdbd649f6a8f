package agent

import (
	"net/http"
	"strings"
)

// requestInfo is what a Kubernetes API request asks for, as far as the
// path, method and query tell. It mirrors the apiserver's RequestInfo for
// the common cases and is used for logs only; the apiserver decides
// authorization itself.
type requestInfo struct {
	Verb        string
	Namespace   string
	Resource    string
	Subresource string
	Name        string
}

// parseRequestInfo reads r's path, method and query. Non-resource paths
// (/version, /healthz, /openapi/...) get a lowercase HTTP verb and no
// resource.
func parseRequestInfo(r *http.Request) requestInfo {
	info := requestInfo{Verb: strings.ToLower(r.Method)}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		parts = parts[2:] // api, version
	case len(parts) >= 4 && parts[0] == "apis":
		parts = parts[3:] // apis, group, version
	default:
		return info
	}
	watch := false
	if parts[0] == "watch" {
		watch = true
		parts = parts[1:]
	}
	if len(parts) >= 2 && parts[0] == "namespaces" {
		info.Namespace = parts[1]
		if len(parts) >= 3 {
			parts = parts[2:]
		} else {
			parts = parts[:1]
			info.Name = info.Namespace
		}
	}
	if len(parts) == 0 || parts[0] == "" {
		return info
	}
	info.Resource = parts[0]
	if info.Resource == "namespaces" && info.Name != "" {
		info.Namespace = ""
	}
	if len(parts) >= 2 {
		info.Name = parts[1]
	}
	if len(parts) >= 3 {
		info.Subresource = strings.Join(parts[2:], "/")
	}

	if q := r.URL.Query().Get("watch"); q == "true" || q == "1" {
		watch = true
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		switch {
		case watch:
			info.Verb = "watch"
		case info.Name == "":
			info.Verb = "list"
		default:
			info.Verb = "get"
		}
	case http.MethodPost:
		info.Verb = "create"
	case http.MethodPut:
		info.Verb = "update"
	case http.MethodPatch:
		info.Verb = "patch"
	case http.MethodDelete:
		if info.Name == "" {
			info.Verb = "deletecollection"
		} else {
			info.Verb = "delete"
		}
	}
	return info
}
