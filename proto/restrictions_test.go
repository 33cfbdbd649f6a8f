package proto

import (
	"strings"
	"testing"
)

func TestValidateRestrictions(t *testing.T) {
	tests := []struct {
		rs   *Restrictions
		errs []string // substrings; none means valid
	}{
		{nil, nil},
		{&Restrictions{}, nil},
		{&Restrictions{
			Namespaces: []string{"dev", ""}, APIGroups: []string{"", "apps", "*"},
			Resources: []string{"pods", "pods/log", "*", "*/scale"}, Verbs: []string{"get", "deletecollection", "*"},
			ResourceNames: []string{"web"},
			TimeWindows: []TimeWindow{
				{Days: []string{"mon", "sun"}, Start: "22:00", End: "06:00", TimeZone: "Europe/Berlin"},
				{Start: "00:00", End: "24:00"},
			},
		}, nil},
		{&Restrictions{Verbs: []string{"get", "destroy"}}, []string{`verb "destroy": want one of get, list`}},
		{&Restrictions{Resources: []string{"pods/", "/log", "a/b/c"}}, []string{`resource "pods/"`, `resource "/log"`, `resource "a/b/c"`}},
		{&Restrictions{ResourceNames: []string{""}}, []string{"names must not be empty"}},
		{&Restrictions{Resources: []string{"pods/exec", "*/proxy", "nodes/proxy", "serviceaccounts/token"}}, nil},
		{&Restrictions{Resources: []string{"pods/*"}}, []string{`resource "pods/*": a subresource cannot be *; name each one (pods/log, pods/exec)`}},
		{&Restrictions{Resources: []string{"*/*"}}, []string{`resource "*/*": a subresource cannot be *`}},
		{&Restrictions{Resources: []string{"pod*", "*s/log", "*/sc*le"}}, []string{`resource "pod*": * stands only for`, `resource "*s/log": * stands only for`, `resource "*/sc*le": * stands only for`}},
		{&Restrictions{NonResourceURLs: []string{"*", "/metrics", "/logs/*", "/", "/healthz/", "/version*"}}, nil},
		{&Restrictions{NonResourceURLs: []string{"metrics"}}, []string{`non-resource URL "metrics": want a path starting with /`}},
		{&Restrictions{NonResourceURLs: []string{"/logs/*/x", "/*/x*"}}, []string{`"/logs/*/x": * may only end a prefix`, `"/*/x*": * may only end a prefix`}},
		{&Restrictions{NonResourceURLs: []string{"/metrics?x=1"}}, []string{"without a query"}},
		{&Restrictions{NonResourceURLs: []string{"/logs/../x", "//metrics", "/logs/./x*"}}, []string{`"/logs/../x": want a clean path`, `"//metrics": want a clean path`, `"/logs/./x*": want a clean path`}},
		{&Restrictions{NonResourceURLs: []string{""}}, []string{`non-resource URL "": want a path starting with /`}},
		{&Restrictions{TimeWindows: []TimeWindow{{Start: "9:00", End: "18:00"}}}, []string{`time window 1: start: "9:00" is not a time of day in the form HH:MM`}},
		{&Restrictions{TimeWindows: []TimeWindow{{Start: "09:00", End: "24:01"}}}, []string{`end: "24:01"`}},
		{&Restrictions{TimeWindows: []TimeWindow{{Start: "24:00", End: "06:00"}}}, []string{`start: "24:00"`}},
		{&Restrictions{TimeWindows: []TimeWindow{{Start: "09:60", End: "10:00"}}}, []string{`start: "09:60"`}},
		{&Restrictions{TimeWindows: []TimeWindow{{Start: "09:00", End: "09:00"}}}, []string{"an empty window; for a whole day use 00:00-24:00"}},
		{&Restrictions{TimeWindows: []TimeWindow{{Days: []string{"monday"}, Start: "09:00", End: "10:00"}}}, []string{`day "monday": want one of mon, tue`}},
		{&Restrictions{TimeWindows: []TimeWindow{{Start: "09:00", End: "10:00"}, {Start: "09:00", End: "10:00", TimeZone: "Europe/Berln"}}}, []string{`time window 2: time zone "Europe/Berln": unknown time zone`}},
		{&Restrictions{TimeWindows: []TimeWindow{{Start: "09:00", End: "10:00", TimeZone: "Local"}}}, []string{`time zone "Local": not an IANA zone name`}},
	}
	for i, tt := range tests {
		err := tt.rs.Validate()
		if len(tt.errs) == 0 {
			if err != nil {
				t.Errorf("%d: %v, want valid", i, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%d: valid, want %q", i, tt.errs)
			continue
		}
		for _, s := range tt.errs {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%d: %q does not contain %q", i, err, s)
			}
		}
	}
}

func TestMatchResource(t *testing.T) {
	tests := []struct {
		rules         []string
		resource, sub string
		want          bool
	}{
		{nil, "pods", "", true},
		{nil, "pods", "log", true},
		{nil, "pods", "exec", false},
		{nil, "nodes", "proxy", false},
		{[]string{"*"}, "deployments", "scale", true},
		{[]string{"*"}, "pods", "attach", false},
		{[]string{"*"}, "pods", "portforward", false},
		{[]string{"*"}, "services", "proxy", false},
		{[]string{"*"}, "pods", "ephemeralcontainers", false},
		{[]string{"*"}, "serviceaccounts", "token", false},
		{[]string{"*"}, "serviceaccounts", "", true},
		{[]string{"*"}, "widgets", "exec", false}, // a CRD's subresource of the same name
		{[]string{"*", "pods/exec"}, "pods", "exec", true},
		{[]string{"*/exec"}, "pods", "exec", true},
		{[]string{"*/exec"}, "pods", "", false},
		{[]string{"*/token"}, "serviceaccounts", "token", true},
		{[]string{"pods"}, "pods", "log", false},
		{[]string{"pods/log"}, "pods", "log", true},
		{[]string{"nodes/proxy"}, "services", "proxy", false},
	}
	for _, tt := range tests {
		if got := MatchResource(tt.rules, tt.resource, tt.sub); got != tt.want {
			t.Errorf("MatchResource(%q, %q, %q) = %v, want %v", tt.rules, tt.resource, tt.sub, got, tt.want)
		}
	}
}

func TestMatchNonResourceURL(t *testing.T) {
	tests := []struct {
		rules []string
		path  string
		want  bool
	}{
		{nil, "/metrics", false},
		{[]string{"*"}, "/debug/pprof/", true},
		{[]string{"/metrics"}, "/metrics", true},
		{[]string{"/metrics"}, "/metrics/slis", false},
		{[]string{"/metrics*"}, "/metrics/slis", true},
		{[]string{"/logs/*"}, "/logs/", true},
		{[]string{"/logs/*"}, "/logs", false},
		{[]string{"/healthz", "/logs/*"}, "/healthz", true},
	}
	for _, tt := range tests {
		if got := MatchNonResourceURL(tt.rules, tt.path); got != tt.want {
			t.Errorf("MatchNonResourceURL(%q, %q) = %v, want %v", tt.rules, tt.path, got, tt.want)
		}
	}
}
