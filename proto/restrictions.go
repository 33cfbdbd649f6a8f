package proto

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// This file gives Restrictions and TimeWindow their one meaning: the
// coordinator validates roles with it, and the agent enforces them with
// it, so the two can never read a window differently.

// Window is a parsed TimeWindow.
type Window struct {
	days       uint8 // bit per time.Weekday; 0 means every day
	start, end int   // minutes since local midnight; end may be 24*60
	loc        *time.Location
}

// Contains reports whether t falls in w. A window whose end is before
// its start spans midnight and belongs to the day it starts on.
func (w Window) Contains(t time.Time) bool {
	t = t.In(w.loc)
	m := t.Hour()*60 + t.Minute()
	day := t.Weekday()
	if w.start < w.end {
		return w.onDay(day) && w.start <= m && m < w.end
	}
	return w.onDay(day) && m >= w.start ||
		w.onDay((day+6)%7) && m < w.end
}

func (w Window) onDay(d time.Weekday) bool { return w.days == 0 || w.days&(1<<d) != 0 }

// Location is the window's time zone.
func (w Window) Location() *time.Location { return w.loc }

// Days are the day names a time window may name, Sunday first as in
// time.Weekday.
var Days = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// Validate checks w with the same parser the agent enforces it with.
func (w TimeWindow) Validate() error {
	_, err := ParseWindow(w)
	return err
}

var weekdays = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// ParseWindow parses and checks tw.
func ParseWindow(tw TimeWindow) (Window, error) {
	var w Window
	var err error
	for _, d := range tw.Days {
		wd, ok := weekdays[strings.ToLower(d)]
		if !ok {
			return Window{}, fmt.Errorf("day %q: want one of mon, tue, wed, thu, fri, sat, sun", d)
		}
		w.days |= 1 << wd
	}
	if w.start, err = parseClock(tw.Start, false); err != nil {
		return Window{}, fmt.Errorf("start: %w", err)
	}
	if w.end, err = parseClock(tw.End, true); err != nil {
		return Window{}, fmt.Errorf("end: %w", err)
	}
	if w.start == w.end {
		return Window{}, fmt.Errorf("start and end are both %s, an empty window; for a whole day use 00:00-24:00", tw.Start)
	}
	if w.end == 0 {
		// An end of 00:00 is midnight at the end of the start's day: the
		// same minutes as 24:00, held one way so a window never ends at 0.
		w.end = 24 * 60
	}
	if w.loc, err = loadZone(tw.TimeZone); err != nil {
		return Window{}, fmt.Errorf("time zone %q: %w", tw.TimeZone, err)
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

// sensitiveSubresources are the subresources that reach into a running
// container or the kubelet, or mint credentials: exec, attach and
// portforward open a process or a socket in a pod, proxy reaches a pod's,
// a service's or (through nodes/proxy) the kubelet's own API, which can
// run commands in any pod of the node, and ephemeralcontainers adds a
// container to a running pod.
var sensitiveSubresources = []string{"exec", "attach", "portforward", "proxy", "ephemeralcontainers"}

// SensitiveSubresource reports whether resource/sub is a subresource that
// restrictions allow only where they name it: */exec, */attach,
// */portforward, */proxy, */ephemeralcontainers and serviceaccounts/token.
// Neither "*" nor an empty Resources includes them.
func SensitiveSubresource(resource, sub string) bool {
	return slices.Contains(sensitiveSubresources, sub) || resource == "serviceaccounts" && sub == "token"
}

// MatchResource reports whether the rules of Restrictions.Resources allow
// resource with subresource sub (sub is "" for the resource itself). It
// matches as Kubernetes RBAC does: "pods" is the pods and none of their
// subresources, "pods/log" that subresource, "*/scale" that subresource
// of any resource, and "*" any resource and subresource except the
// sensitive ones, which must be named. An empty rules allows every
// resource and subresource but the sensitive ones.
func MatchResource(rules []string, resource, sub string) bool {
	if len(rules) == 0 {
		return !SensitiveSubresource(resource, sub)
	}
	want := resource
	if sub != "" {
		want = resource + "/" + sub
	}
	for _, r := range rules {
		switch {
		case r == want:
			return true
		case r == "*":
			if !SensitiveSubresource(resource, sub) {
				return true
			}
		case sub != "" && strings.HasPrefix(r, "*/") && r[2:] == sub:
			return true
		}
	}
	return false
}

// MatchNonResourceURL reports whether the rules of
// Restrictions.NonResourceURLs allow path, as Kubernetes RBAC matches
// them: "*" any path, "/logs/*" any path starting with "/logs/", any
// other rule that exact path.
func MatchNonResourceURL(rules []string, path string) bool {
	for _, r := range rules {
		if r == "*" || r == path {
			return true
		}
		if prefix, ok := strings.CutSuffix(r, "*"); ok && strings.HasPrefix(path, prefix) {
			return true
		}
	}
	return false
}

// Verbs are the verbs a request to the Kubernetes API can have.
var Verbs = []string{"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "*"}

// FieldError is a problem with one field of a request, named as its JSON
// names it (restrictions.verbs).
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Err.Error() }

func (e *FieldError) Unwrap() error { return e.Err }

// Validate reports every problem in rs that would make the
// agent refuse more than its author meant: unknown verbs or days, times
// that are not HH:MM, empty windows, unknown time zones, malformed
// resources. A nil rs is valid. The coordinator calls it before storing
// a role; the agent itself treats a window it cannot parse as closed.
func (rs *Restrictions) Validate() error {
	if rs == nil {
		return nil
	}
	var errs []error
	for _, v := range rs.Verbs {
		if !slices.Contains(Verbs, v) {
			errs = append(errs, &FieldError{"restrictions.verbs", fmt.Errorf("verb %q: want one of %s", v, strings.Join(Verbs, ", "))})
		}
	}
	for _, r := range rs.Resources {
		res, sub, hasSub := strings.Cut(r, "/")
		switch {
		case res == "" || hasSub && (sub == "" || strings.Contains(sub, "/")):
			errs = append(errs, &FieldError{"restrictions.resources", fmt.Errorf("resource %q: want a plural resource name with an optional subresource (pods, pods/log, */scale) or *", r)})
		case sub == "*":
			errs = append(errs, &FieldError{"restrictions.resources", fmt.Errorf("resource %q: a subresource cannot be *; name each one (%s/log, %s/exec), or use * for the resources and their subresources but exec, attach, portforward, proxy, ephemeralcontainers and serviceaccounts/token", r, res, res)})
		case res != "*" && strings.Contains(res, "*") || strings.Contains(sub, "*"):
			errs = append(errs, &FieldError{"restrictions.resources", fmt.Errorf("resource %q: * stands only for a whole resource (*) or a whole resource name (*/scale)", r)})
		}
	}
	for _, u := range rs.NonResourceURLs {
		if err := validNonResourceURL(u); err != nil {
			errs = append(errs, &FieldError{"restrictions.non_resource_urls", fmt.Errorf("non-resource URL %q: %w", u, err)})
		}
	}
	for _, n := range rs.ResourceNames {
		if n == "" {
			errs = append(errs, &FieldError{"restrictions.resource_names", errors.New("resource name \"\": names must not be empty")})
		}
	}
	for i, tw := range rs.TimeWindows {
		if _, err := ParseWindow(tw); err != nil {
			errs = append(errs, &FieldError{"restrictions.time_windows", fmt.Errorf("time window %d: %w", i+1, err)})
		}
	}
	return errors.Join(errs...)
}

// validNonResourceURL checks a rule of Restrictions.NonResourceURLs.
func validNonResourceURL(u string) error {
	if u == "*" {
		return nil
	}
	p, _ := strings.CutSuffix(u, "*")
	switch {
	case !strings.HasPrefix(u, "/"):
		return errors.New("want a path starting with / (/metrics), a prefix ending in * (/logs/*), or *")
	case strings.Contains(p, "*"):
		return errors.New("* may only end a prefix, as in /logs/*")
	case strings.ContainsAny(u, "?#"):
		return errors.New("want a path without a query or fragment")
	}
	segs := strings.Split(p[1:], "/")
	for i, seg := range segs {
		if seg == "." || seg == ".." || seg == "" && i < len(segs)-1 {
			return errors.New("want a clean path, without . or .. segments or //; the agent refuses such paths")
		}
	}
	return nil
}
