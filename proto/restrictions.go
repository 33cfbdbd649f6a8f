package proto

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Verbs are the Kubernetes request verbs a restriction may name.
var Verbs = []string{"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "*"}

// Days are the day names a time window may name, Sunday first as in
// time.Weekday.
var Days = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// Validate checks r and returns an error naming every problem and how to
// fix it.
func (r *Restrictions) Validate() error {
	if r == nil {
		return nil
	}
	var errs []error
	for _, v := range r.Verbs {
		if !contains(Verbs, v) {
			errs = append(errs, fmt.Errorf("unknown verb %q (use %s)", v, strings.Join(Verbs, ", ")))
		}
	}
	for _, res := range r.Resources {
		if res == "" || strings.Count(res, "/") > 1 {
			errs = append(errs, fmt.Errorf("resource %q must be a plural name with an optional subresource, e.g. pods or pods/log", res))
		}
	}
	for i, w := range r.TimeWindows {
		if err := w.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("time window %d: %w", i+1, err))
		}
	}
	return errors.Join(errs...)
}

// Validate checks w.
func (w TimeWindow) Validate() error {
	var errs []error
	for _, d := range w.Days {
		if !contains(Days, strings.ToLower(d)) {
			errs = append(errs, fmt.Errorf("unknown day %q (use mon, tue, wed, thu, fri, sat, sun)", d))
		}
	}
	if _, err := ParseClock(w.Start); err != nil {
		errs = append(errs, fmt.Errorf("start: %w", err))
	}
	if _, err := ParseClock(w.End); err != nil {
		errs = append(errs, fmt.Errorf("end: %w", err))
	}
	if w.Start == w.End && w.Start != "" {
		errs = append(errs, fmt.Errorf("start and end are both %s; the window would be empty", w.Start))
	}
	if _, err := time.LoadLocation(w.TimeZone); err != nil {
		errs = append(errs, fmt.Errorf("time zone %q: %w (use an IANA name like Europe/Berlin)", w.TimeZone, err))
	}
	return errors.Join(errs...)
}

// ParseClock parses "HH:MM" (24h) into minutes after midnight.
func ParseClock(s string) (int, error) {
	t, err := time.Parse("15:04", s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a HH:MM time (e.g. 09:00 or 18:30)", s)
	}
	return t.Hour()*60 + t.Minute(), nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
