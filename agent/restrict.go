package agent

import (
	"fmt"
	"slices"
	"strings"
	"time"
	// Time zones of TimeWindows must resolve in a distroless image, which
	// has no /usr/share/zoneinfo. The embedded database is ~410 KB in a
	// binary of its own; the clustral binary links it already.
	_ "time/tzdata"

	"github.com/clustral/clustral/proto"
)

// stage is how far a request gets through a grant's restrictions, in the
// order they are checked. A later stage is a more specific refusal: the
// grant would allow the request but for that one thing.
type stage int

const (
	stageVerb      stage = iota // the verb is refused
	stageResource               // the API group, resource or name is refused
	stageNamespace              // the namespace is refused
	stageTime                   // outside every time window
	stageAllowed
)

var stageCodes = [...]proto.ErrorCode{
	stageVerb:      proto.CodeVerbNotAllowed,
	stageResource:  proto.CodeResourceNotAllowed,
	stageNamespace: proto.CodeNamespaceNotAllowed,
	stageTime:      proto.CodeOutsideTimeWindow,
}

// check returns how far info gets through rs at now; stageAllowed means
// rs allows it. A nil rs allows everything.
//
// Restrictions that limit what a grant touches (see scoped) allow the
// sensitive subresources only where Resources names them, and
// non-resource URLs only where NonResourceURLs lists them. Discovery
// (/api, /apis, /version, /openapi) and self reviews (see selfReview) are
// judged by time windows only, so that kubectl and k9s work for every
// role. So is the live view (proto.LivePrefix), which never reaches the
// apiserver and filters every object it sends by what the grants allow.
func check(rs *proto.Restrictions, info requestInfo, now time.Time) stage {
	if rs == nil {
		return stageAllowed
	}
	if (info.IsResourceRequest || !discovery(info)) && !selfReview(info) && scoped(rs) {
		if len(rs.Verbs) > 0 && !matchVerb(rs.Verbs, info.Verb) {
			return stageVerb
		}
		if resourceRefusal(rs, info) != "" {
			return stageResource
		}
		if info.IsResourceRequest && len(rs.Namespaces) > 0 && !slices.Contains(rs.Namespaces, info.Namespace) {
			return stageNamespace
		}
	}
	if len(rs.TimeWindows) > 0 && !inWindows(rs.TimeWindows, now) {
		return stageTime
	}
	return stageAllowed
}

// discovery reports whether info is a non-resource request for API
// discovery or the OpenAPI documents, which kubectl needs for anything:
// /api, /apis and the group and version paths under them, /version and
// /openapi/....
func discovery(info requestInfo) bool {
	if info.IsResourceRequest || info.bad {
		return false
	}
	p := info.Path
	switch {
	case p == "/api", p == "/apis", p == "/version", p == "/version/":
		return true
	case strings.HasPrefix(p, "/api/"), strings.HasPrefix(p, "/apis/"):
		// The parser reads longer paths under these as resource
		// requests.
		return true
	case strings.HasPrefix(p, "/openapi/"), strings.HasPrefix(p, proto.LivePrefix):
		return true
	}
	return false
}

func matchVerb(verbs []string, verb string) bool {
	return slices.Contains(verbs, "*") || slices.Contains(verbs, verb)
}

// scoped reports whether rs limits what a grant touches, not only when
// it applies.
func scoped(rs *proto.Restrictions) bool {
	return len(rs.Verbs) > 0 || len(rs.APIGroups) > 0 || len(rs.Resources) > 0 ||
		len(rs.ResourceNames) > 0 || len(rs.Namespaces) > 0 || len(rs.NonResourceURLs) > 0
}

// resourceRefusal says why the scoped rs refuses the API group, resource
// or name of info, or its non-resource URL, or "" if it does not.
func resourceRefusal(rs *proto.Restrictions, info requestInfo) string {
	if info.bad {
		return "cannot judge the path " + info.Path + " (it has a . or .. segment, //, an encoded /, or no meaning to the API server)"
	}
	if !info.IsResourceRequest {
		if !proto.MatchNonResourceURL(rs.NonResourceURLs, info.Path) {
			if len(rs.NonResourceURLs) == 0 {
				return "allows no non-resource URL but discovery (/api, /apis, /version, /openapi)"
			}
			return "allows the non-resource URLs " + listOf(rs.NonResourceURLs, nil) + " besides discovery"
		}
		return ""
	}
	if len(rs.APIGroups) > 0 && !slices.Contains(rs.APIGroups, "*") && !slices.Contains(rs.APIGroups, info.APIGroup) {
		return "allows API groups " + listOf(rs.APIGroups, groupName)
	}
	if !proto.MatchResource(rs.Resources, info.Resource, info.Subresource) {
		sub := info.Resource + "/" + info.Subresource
		switch {
		case len(rs.Resources) == 0:
			return "does not name " + sub + ", and a role with limits allows the subresources exec, attach, portforward, proxy, ephemeralcontainers and serviceaccounts/token only where its resources name them"
		case slices.Contains(rs.Resources, "*") && proto.SensitiveSubresource(info.Resource, info.Subresource):
			return "allows resources " + listOf(rs.Resources, nil) + ", and * does not include " + sub + ", which must be named"
		}
		return "allows resources " + listOf(rs.Resources, nil)
	}
	if len(rs.ResourceNames) > 0 && (info.Name == "" || !slices.Contains(rs.ResourceNames, info.Name)) {
		return "allows only the names " + listOf(rs.ResourceNames, quote)
	}
	return ""
}

// refusal is the reason, for a person, why grant g refuses info at stage
// st, e.g. "role 'viewer' allows namespaces dev, staging".
func refusal(g proto.RoleGrant, info requestInfo, st stage, now time.Time) string {
	rs := g.Restrictions
	var why string
	switch st {
	case stageVerb:
		why = "allows verbs " + listOf(rs.Verbs, nil)
	case stageResource:
		why = resourceRefusal(rs, info)
	case stageNamespace:
		why = "allows namespaces " + listOf(rs.Namespaces, namespaceName)
	case stageTime:
		why = "applies only " + describeWindows(rs.TimeWindows, now)
	}
	return fmt.Sprintf("role '%s' %s", g.Role, why)
}

// describe names what info asks for, e.g. "delete pods in namespace
// 'kube-system'" or "get /version".
func describe(info requestInfo) string {
	if !info.IsResourceRequest {
		return info.Verb + " " + info.Path
	}
	var b strings.Builder
	b.WriteString(info.Verb)
	b.WriteByte(' ')
	if info.Resource == "" {
		b.WriteString(info.Path)
		return b.String()
	}
	b.WriteString(info.Resource)
	if info.APIGroup != "" {
		b.WriteString("." + info.APIGroup)
	}
	if info.Subresource != "" {
		b.WriteString("/" + info.Subresource)
	}
	if info.Name != "" {
		fmt.Fprintf(&b, " '%s'", info.Name)
	}
	if info.Namespace != "" {
		fmt.Fprintf(&b, " in namespace '%s'", info.Namespace)
	} else {
		b.WriteString(" at cluster scope")
	}
	return b.String()
}

func listOf(xs []string, name func(string) string) string {
	if name == nil {
		return strings.Join(xs, ", ")
	}
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = name(x)
	}
	return strings.Join(out, ", ")
}

func groupName(g string) string {
	if g == "" {
		return "core"
	}
	return g
}

func namespaceName(ns string) string {
	if ns == "" {
		return "(cluster scope)"
	}
	return ns
}

func quote(s string) string { return "'" + s + "'" }

// inWindows reports whether now falls in any of tws. A window that does
// not parse contains no time: a bad window never widens access.
func inWindows(tws []proto.TimeWindow, now time.Time) bool {
	for _, tw := range tws {
		if w, err := proto.ParseWindow(tw); err == nil && w.Contains(now) {
			return true
		}
	}
	return false
}

func describeWindows(tws []proto.TimeWindow, now time.Time) string {
	parts := make([]string, 0, len(tws))
	for _, tw := range tws {
		parts = append(parts, tw.String())
	}
	s := strings.Join(parts, "; ")
	if w, err := proto.ParseWindow(tws[0]); err == nil {
		local := now.In(w.Location())
		s += fmt.Sprintf(" (it is %s %s there now)", strings.ToLower(local.Weekday().String()[:3]), local.Format("15:04"))
	}
	return s
}
