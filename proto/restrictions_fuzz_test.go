package proto

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// FuzzRestrictions decodes arbitrary JSON as a role's restrictions, as the
// coordinator does with a role from the API, validates it, and checks
// the rules the agent enforces with: a valid rule matches what it names,
// "*" never includes a sensitive subresource, a valid non-resource rule
// never matches a path with a dot segment unless it is "*" or a prefix,
// and validation survives a JSON round trip.
func FuzzRestrictions(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"namespaces":["dev",""],"verbs":["get","list","watch"],"resources":["*"]}`,
		`{"resources":["pods","pods/log","*/scale","nodes/proxy","serviceaccounts/token"]}`,
		`{"resources":["pods/*","*/*","pod*","/log","a/b/c"]}`,
		`{"non_resource_urls":["/metrics","/logs/*","*","/healthz/"]}`,
		`{"non_resource_urls":["metrics","/a/*/b","//x","/x/../y","/q?x"]}`,
		`{"api_groups":["","apps","*"],"resource_names":["web",""]}`,
		`{"time_windows":[{"days":["mon","fri"],"start":"09:00","end":"18:00","time_zone":"Europe/Berlin"}]}`,
		`{"time_windows":[{"start":"22:00","end":"06:00"},{"start":"9:00","end":"24:01","time_zone":"Local"}]}`,
		`{"verbs":["destroy"]}`,
	} {
		f.Add([]byte(s))
	}
	sensitive := [][2]string{{"pods", "exec"}, {"pods", "attach"}, {"pods", "portforward"}, {"nodes", "proxy"},
		{"services", "proxy"}, {"pods", "proxy"}, {"pods", "ephemeralcontainers"}, {"serviceaccounts", "token"}}
	f.Fuzz(func(t *testing.T, data []byte) {
		var rs Restrictions
		if json.Unmarshal(data, &rs) != nil {
			return
		}
		err := rs.Validate()
		b, merr := json.Marshal(&rs)
		if merr != nil {
			t.Fatalf("marshal %+v: %v", rs, merr)
		}
		var back Restrictions
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("round trip of %s: %v", b, err)
		}
		if err2 := back.Validate(); (err == nil) != (err2 == nil) {
			t.Fatalf("validation changed in a round trip: %v, then %v", err, err2)
		}
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty validation error")
			}
			return
		}
		for _, r := range rs.Resources {
			res, sub, _ := strings.Cut(r, "/")
			if res != "*" && !MatchResource([]string{r}, res, sub) {
				t.Fatalf("valid resource rule %q does not match itself", r)
			}
		}
		for _, s := range sensitive {
			if MatchResource([]string{"*"}, s[0], s[1]) {
				t.Fatalf("* matches %s/%s", s[0], s[1])
			}
		}
		for _, u := range rs.NonResourceURLs {
			if u != "*" && !strings.HasPrefix(u, "/") {
				t.Fatalf("valid non-resource URL %q does not start with /", u)
			}
			if !strings.HasSuffix(u, "*") && MatchNonResourceURL([]string{u}, u+"/../x") {
				t.Fatalf("exact non-resource URL %q matches a longer path", u)
			}
		}
	})
}

// FuzzParseWindow parses arbitrary time windows and checks that a window
// the parser accepts has a start and end in range, contains its own start
// on a day it names, and does not contain its end minute when the window
// does not span midnight; Contains must never panic.
func FuzzParseWindow(f *testing.F) {
	f.Add("mon,tue,wed,thu,fri", "09:00", "18:00", "Europe/Berlin", int64(1777636800))
	f.Add("", "22:00", "06:00", "", int64(0))
	f.Add("sat", "00:00", "24:00", "America/New_York", int64(-1))
	f.Add("sun", "23:00", "01:00", "Asia/Kolkata", int64(1e12))
	f.Add("monday", "9:00", "24:01", "Local", int64(1))
	f.Add("fri", "24:00", "06:00", "Europe/Berln", int64(42))
	f.Add("MON", "12:00", "12:00", "UTC", int64(42))
	f.Fuzz(func(t *testing.T, days, start, end, tz string, unix int64) {
		tw := TimeWindow{Start: start, End: end, TimeZone: tz}
		if days != "" {
			tw.Days = strings.Split(days, ",")
		}
		w, err := ParseWindow(tw)
		if (err == nil) != (tw.Validate() == nil) {
			t.Fatalf("ParseWindow and Validate disagree on %+v", tw)
		}
		if err != nil {
			return
		}
		w.Contains(time.Unix(unix%(1<<40), 0)) // must not panic
		if w.start < 0 || w.start >= 24*60 || w.end <= 0 || w.end > 24*60 || w.start == w.end {
			t.Fatalf("%+v parsed to start %d end %d", tw, w.start, w.end)
		}
		// 2026-05-03 is a Sunday; find the first day the window names.
		day := time.Sunday
		for ; w.days != 0 && !w.onDay(day); day++ {
		}
		at := time.Date(2026, 5, 3+int(day), w.start/60, w.start%60, 0, 0, w.loc)
		if at.Hour()*60+at.Minute() != w.start || at.Weekday() != day {
			return // the start does not exist that day (a DST gap)
		}
		if !w.Contains(at) {
			t.Fatalf("%+v does not contain its own start %s", tw, at)
		}
		if w.start < w.end && w.end < 24*60 {
			endAt := time.Date(2026, 5, 3+int(day), w.end/60, w.end%60, 0, 0, w.loc)
			if endAt.Hour()*60+endAt.Minute() == w.end && w.Contains(endAt) {
				t.Fatalf("%+v contains its end %s", tw, endAt)
			}
		}
	})
}
