// Package stamp holds what the image and release programs share about
// the output they stamp: its creation time, which makes it reproducible.
package stamp

import (
	"fmt"
	"strconv"
	"time"
)

// Created parses the -created flag: Unix seconds, the empty string (no
// $SOURCE_DATE_EPOCH) meaning 0. A bad value is an error naming the flag
// and how to get a good one.
func Created(s string) (time.Time, error) {
	if s == "" {
		s = "0"
	}
	secs, err := strconv.ParseInt(s, 10, 64)
	if err != nil || secs < 0 {
		return time.Time{}, fmt.Errorf("-created %q: want Unix seconds, e.g. $(git log -1 --format=%%ct)", s)
	}
	return time.Unix(secs, 0).UTC(), nil
}
