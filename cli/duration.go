package cli

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

var isoDuration = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$`)
})

// parseDuration accepts Go durations (30m, 8h), days (1d, 2d12h) and ISO
// 8601 durations (PT30M, P1D, P1DT2H).
func parseDuration(s string) (time.Duration, error) {
	in := strings.TrimSpace(s)
	if m := isoDuration().FindStringSubmatch(strings.ToUpper(in)); m != nil && in != "P" && !strings.HasSuffix(strings.ToUpper(in), "T") {
		units := []time.Duration{7 * 24 * time.Hour, 24 * time.Hour, time.Hour, time.Minute, time.Second}
		var d time.Duration
		for i, u := range units {
			if m[i+1] != "" {
				n, _ := strconv.Atoi(m[i+1])
				d += time.Duration(n) * u
			}
		}
		if d <= 0 {
			return 0, fmt.Errorf("duration %q is zero; use e.g. 30m, 8h, 1d or PT8H", s)
		}
		return d, nil
	}
	// Days: a leading "<n>d" then an optional Go duration.
	var d time.Duration
	rest := in
	if i := strings.IndexByte(rest, 'd'); i > 0 {
		n, err := strconv.Atoi(rest[:i])
		if err == nil {
			d = time.Duration(n) * 24 * time.Hour
			rest = rest[i+1:]
		}
	}
	if rest != "" {
		g, err := time.ParseDuration(rest)
		if err != nil {
			return 0, fmt.Errorf("duration %q is not valid; use e.g. 30m, 8h, 1d or PT8H", s)
		}
		d += g
	}
	if d <= 0 {
		return 0, fmt.Errorf("duration %q must be positive; use e.g. 30m, 8h, 1d or PT8H", s)
	}
	return d, nil
}
