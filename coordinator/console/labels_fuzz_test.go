package console

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

// FuzzParseLabels: the labels field of the add-cluster form parses into
// non-empty, trimmed keys, or an error; a parse written back as the form
// shows it parses to the same labels.
func FuzzParseLabels(f *testing.F) {
	for _, s := range []string{"", "env=prod", "env=prod, team=payments", "a=b=c", "x", "=v", " k = v ,\n", "env=<script>alert(1)</script>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		labels, err := parseLabels(s)
		if err != nil {
			return
		}
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(labels)) {
			if k == "" || k != strings.TrimSpace(k) || strings.ContainsAny(k, "=,\n") {
				t.Fatalf("parseLabels(%q) gave the key %q", s, k)
			}
			parts = append(parts, k+"="+labels[k])
		}
		again, err := parseLabels(strings.Join(parts, ", "))
		if err != nil || !maps.Equal(again, labels) {
			t.Fatalf("parseLabels(%q) = %v; written back it parses to %v, %v", s, labels, again, err)
		}
	})
}
