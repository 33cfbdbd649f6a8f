package cli

import (
	"fmt"
	"strings"

	"github.com/clustral/clustral/proto"
)

// parseWindow parses a time window such as "mon-fri 09:00-18:00
// Europe/Berlin", "sat,sun 10:00-14:00" or "daily 22:00-06:00 UTC".
func parseWindow(s string) (proto.TimeWindow, error) {
	f := strings.Fields(s)
	if len(f) < 2 || len(f) > 3 {
		return proto.TimeWindow{}, fmt.Errorf("time window %q: use \"<days> <HH:MM>-<HH:MM> [time zone]\", e.g. \"mon-fri 09:00-18:00 Europe/Berlin\"", s)
	}
	var w proto.TimeWindow
	days, err := parseDays(f[0])
	if err != nil {
		return w, fmt.Errorf("time window %q: %w", s, err)
	}
	w.Days = days
	start, end, ok := strings.Cut(f[1], "-")
	if !ok {
		return w, fmt.Errorf("time window %q: hours must be <HH:MM>-<HH:MM>", s)
	}
	w.Start, w.End = start, end
	if len(f) == 3 {
		w.TimeZone = f[2]
	}
	if err := w.Validate(); err != nil {
		return w, fmt.Errorf("time window %q: %w", s, err)
	}
	return w, nil
}

func parseDays(s string) ([]string, error) {
	s = strings.ToLower(s)
	if s == "daily" || s == "*" || s == "every" {
		return nil, nil
	}
	var out []string
	for _, part := range strings.Split(s, ",") {
		a, b, isRange := strings.Cut(part, "-")
		ia, ib := dayIndex(a), dayIndex(b)
		if ia < 0 || (isRange && ib < 0) {
			return nil, fmt.Errorf("unknown day in %q (use mon..sun, ranges like mon-fri, lists like sat,sun, or daily)", part)
		}
		if !isRange {
			out = append(out, proto.Days[ia])
			continue
		}
		for i := ia; ; i = (i + 1) % 7 {
			out = append(out, proto.Days[i])
			if i == ib {
				break
			}
		}
	}
	return out, nil
}

func dayIndex(d string) int {
	for i, v := range proto.Days {
		if strings.HasPrefix(d, v) && len(d) >= 3 {
			return i
		}
	}
	return -1
}
