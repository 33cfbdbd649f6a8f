package ui

import (
	"fmt"
	"strings"
	"testing"
)

// FuzzLogLines: whatever a pod writes, logLines ends without error on a
// reader that does not fail, passes on no line ending, and keeps each
// line to the limit plus its note. Input with no line over the limit
// comes out whole: its lines, joined again, are the input.
func FuzzLogLines(f *testing.F) {
	for _, s := range []string{"", "a\n", "a\r\nb", "\n\n", "0123456789\nx\n", strings.Repeat("y", 70<<10) + "\nz"} {
		f.Add(s, 4)
	}
	f.Fuzz(func(t *testing.T, in string, limit int) {
		if limit < 1 || limit > 1<<20 {
			return
		}
		note := fmt.Sprintf(" [line cut at %d bytes]", limit)
		var got []string
		cut := false
		err := logLines(strings.NewReader(in), limit, func(l string) error {
			if strings.Contains(l, "\n") {
				t.Fatalf("line %q holds a line ending", l)
			}
			if body, ok := strings.CutSuffix(l, note); ok {
				cut = true
				l = body
			}
			if len(l) > limit {
				t.Fatalf("a line of %d bytes passed a limit of %d", len(l), limit)
			}
			got = append(got, l)
			return nil
		})
		if err != nil {
			t.Fatalf("logLines: %v", err)
		}
		if cut || strings.Contains(in, "\r") {
			return
		}
		want := strings.TrimSuffix(in, "\n")
		if joined := strings.Join(got, "\n"); joined != want {
			t.Fatalf("lines joined = %q, want %q", joined, want)
		}
	})
}
