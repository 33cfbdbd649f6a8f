package agent

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
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
// Non-resource requests (discovery, /version, /openapi, /healthz) are
// judged by time windows only, so that kubectl works for every role.
func check(rs *proto.Restrictions, info requestInfo, now time.Time) stage {
	if rs == nil {
		return stageAllowed
	}
	if info.IsResourceRequest {
		if len(rs.Verbs) > 0 && !matchVerb(rs.Verbs, info.Verb) {
			return stageVerb
		}
		if resourceRefusal(rs, info) != "" {
			return stageResource
		}
		if len(rs.Namespaces) > 0 && !slices.Contains(rs.Namespaces, info.Namespace) {
			return stageNamespace
		}
	}
	if len(rs.TimeWindows) > 0 && !inWindows(rs.TimeWindows, now) {
		return stageTime
	}
	return stageAllowed
}

func matchVerb(verbs []string, verb string) bool {
	return slices.Contains(verbs, "*") || slices.Contains(verbs, verb)
}

// scoped reports whether rs limits resource requests at all.
func scoped(rs *proto.Restrictions) bool {
	return len(rs.Verbs) > 0 || len(rs.APIGroups) > 0 || len(rs.Resources) > 0 ||
		len(rs.ResourceNames) > 0 || len(rs.Namespaces) > 0
}

// resourceRefusal says why rs refuses the API group, resource or name of
// the resource request info, or "" if it does not.
func resourceRefusal(rs *proto.Restrictions, info requestInfo) string {
	if info.bad && scoped(rs) {
		return "cannot judge the path " + info.Path
	}
	if len(rs.APIGroups) > 0 && !slices.Contains(rs.APIGroups, "*") && !slices.Contains(rs.APIGroups, info.APIGroup) {
		return "allows API groups " + listOf(rs.APIGroups, groupName)
	}
	if len(rs.Resources) > 0 && !matchResource(rs.Resources, info.Resource, info.Subresource) {
		return "allows resources " + listOf(rs.Resources, nil)
	}
	if len(rs.ResourceNames) > 0 && (info.Name == "" || !slices.Contains(rs.ResourceNames, info.Name)) {
		return "allows only the names " + listOf(rs.ResourceNames, quote)
	}
	return ""
}

// matchResource matches as Kubernetes RBAC does: "*" is any resource and
// subresource, "pods" the pods themselves and none of their subresources,
// "pods/log" that subresource, "*/scale" that subresource of any resource.
func matchResource(rules []string, resource, sub string) bool {
	want := resource
	if sub != "" {
		want = resource + "/" + sub
	}
	for _, r := range rules {
		switch {
		case r == "*", r == want:
			return true
		case sub != "" && strings.HasPrefix(r, "*/") && r[2:] == sub:
			return true
		}
	}
	return false
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

// window is a parsed proto.TimeWindow.
type window struct {
	days       uint8 // bit per time.Weekday; 0 means every day
	start, end int   // minutes since local midnight; end may be 24*60
	loc        *time.Location
}

// contains reports whether t falls in w. A window whose end is before
// its start spans midnight and belongs to the day it starts on.
func (w window) contains(t time.Time) bool {
	t = t.In(w.loc)
	m := t.Hour()*60 + t.Minute()
	day := t.Weekday()
	if w.start < w.end {
		return w.onDay(day) && w.start <= m && m < w.end
	}
	return w.onDay(day) && m >= w.start ||
		w.onDay((day+6)%7) && m < w.end
}

func (w window) onDay(d time.Weekday) bool { return w.days == 0 || w.days&(1<<d) != 0 }

// inWindows reports whether now falls in any of tws. A window that does
// not parse contains no time: a bad window never widens access.
func inWindows(tws []proto.TimeWindow, now time.Time) bool {
	for _, tw := range tws {
		if w, err := parseWindow(tw); err == nil && w.contains(now) {
			return true
		}
	}
	return false
}

func describeWindows(tws []proto.TimeWindow, now time.Time) string {
	parts := make([]string, 0, len(tws))
	for _, tw := range tws {
		days := "every day"
		if len(tw.Days) > 0 {
			days = strings.Join(tw.Days, ",")
		}
		zone := tw.TimeZone
		if zone == "" {
			zone = "UTC"
		}
		parts = append(parts, fmt.Sprintf("%s %s-%s %s", days, tw.Start, tw.End, zone))
	}
	s := strings.Join(parts, "; ")
	if w, err := parseWindow(tws[0]); err == nil {
		local := now.In(w.loc)
		s += fmt.Sprintf(" (it is %s %s there now)", strings.ToLower(local.Weekday().String()[:3]), local.Format("15:04"))
	}
	return s
}

var weekdays = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

func parseWindow(tw proto.TimeWindow) (window, error) {
	var w window
	var err error
	for _, d := range tw.Days {
		wd, ok := weekdays[strings.ToLower(d)]
		if !ok {
			return window{}, fmt.Errorf("day %q: want one of mon, tue, wed, thu, fri, sat, sun", d)
		}
		w.days |= 1 << wd
	}
	if w.start, err = parseClock(tw.Start, false); err != nil {
		return window{}, fmt.Errorf("start: %w", err)
	}
	if w.end, err = parseClock(tw.End, true); err != nil {
		return window{}, fmt.Errorf("end: %w", err)
	}
	if w.start == w.end {
		return window{}, fmt.Errorf("start and end are both %s, an empty window; for a whole day use 00:00-24:00", tw.Start)
	}
	if w.loc, err = loadZone(tw.TimeZone); err != nil {
		return window{}, fmt.Errorf("time zone %q: %w", tw.TimeZone, err)
	}
	return w, nil
}

// parseClock parses "HH:MM" (24h) into minutes since midnight; "24:00"
// is allowed as an end.
func parseClock(s string, end bool) (int, error) {
	bad := fmt.Errorf("%q is not a time of day in the form HH:MM (00:00 to 23:59)", s)
	if len(s) != 5 || s[2] != ':' {
		return 0, bad
	}
	for _, i := range []int{0, 1, 3, 4} {
		if s[i] < '0' || s[i] > '9' {
			return 0, bad
		}
	}
	h := int(s[0]-'0')*10 + int(s[1]-'0')
	m := int(s[3]-'0')*10 + int(s[4]-'0')
	switch {
	case end && h == 24 && m == 0:
		return 24 * 60, nil
	case h > 23 || m > 59:
		return 0, bad
	}
	return h*60 + m, nil
}

// zones caches loaded locations by name. time.LoadLocation reads and
// parses zone data on every call; the set of valid names is finite, and
// names that fail to load are not kept.
var zones sync.Map // string -> *time.Location

func loadZone(name string) (*time.Location, error) {
	if name == "" || name == "UTC" {
		return time.UTC, nil
	}
	if l, ok := zones.Load(name); ok {
		return l.(*time.Location), nil
	}
	// "Local" would be the agent's own zone, which the admin who wrote
	// the role cannot know.
	if name == "Local" {
		return nil, errors.New("not an IANA zone name (e.g. Europe/Berlin)")
	}
	l, err := time.LoadLocation(name)
	if err != nil {
		return nil, errors.New("unknown time zone; want an IANA name such as Europe/Berlin or America/New_York")
	}
	zones.Store(name, l)
	return l, nil
}

// requestVerbs are the verbs a request to the Kubernetes API can have.
var requestVerbs = []string{"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "*"}

// ValidateRestrictions reports every problem in rs that would make the
// agent refuse more than its author meant: unknown verbs or days, times
// that are not HH:MM, empty windows, unknown time zones, malformed
// resources. A nil rs is valid. The coordinator calls it before storing
// a role; the agent itself treats a window it cannot parse as closed.
func ValidateRestrictions(rs *proto.Restrictions) error {
	if rs == nil {
		return nil
	}
	var errs []error
	for _, v := range rs.Verbs {
		if !slices.Contains(requestVerbs, v) {
			errs = append(errs, fmt.Errorf("verb %q: want one of %s", v, strings.Join(requestVerbs, ", ")))
		}
	}
	for _, r := range rs.Resources {
		res, sub, hasSub := strings.Cut(r, "/")
		if res == "" || hasSub && (sub == "" || strings.Contains(sub, "/")) {
			errs = append(errs, fmt.Errorf("resource %q: want a plural resource name with an optional subresource (pods, pods/log, */scale) or *", r))
		}
	}
	for _, n := range rs.ResourceNames {
		if n == "" {
			errs = append(errs, errors.New("resource name \"\": names must not be empty"))
		}
	}
	for i, tw := range rs.TimeWindows {
		if _, err := parseWindow(tw); err != nil {
			errs = append(errs, fmt.Errorf("time window %d: %w", i+1, err))
		}
	}
	return errors.Join(errs...)
}
