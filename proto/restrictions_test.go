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
