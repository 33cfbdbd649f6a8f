package store

import (
	"errors"
	"testing"
)

// TestHistoryBounds: a history drops its oldest commits past its count
// and past historyBytes of values, keeping at least the newest, and a
// watch from before what it keeps gets a *CompactedError.
func TestHistoryBounds(t *testing.T) {
	big := make([]byte, historyBytes/4)
	tests := []struct {
		name    string
		max     int
		values  [][]byte
		oldest  int64 // oldest revision kept
		dropped int64
	}{
		{"count", 2, [][]byte{nil, nil, nil}, 2, 1},
		{"bytes", 100, [][]byte{big, big, big, big}, 2, 1},
		{"one larger than the bound", 100, [][]byte{append(big, make([]byte, historyBytes)...)}, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHistory(tt.max)
			for i, v := range tt.values {
				h.publish(Commit{Rev: int64(i + 1), Changes: []Change{{Bucket: Meta, Key: "k", Value: v}}})
			}
			cs, _, err := h.since(tt.dropped)
			if err != nil || len(cs) == 0 || cs[0].Rev != tt.oldest {
				t.Fatalf("since(%d) = %d commits from %v, %v; want from %d", tt.dropped, len(cs), cs, err, tt.oldest)
			}
			if tt.dropped > 0 {
				var ce *CompactedError
				if _, _, err := h.since(tt.dropped - 1); !errors.As(err, &ce) {
					t.Fatalf("since(%d) = %v, want a *CompactedError", tt.dropped-1, err)
				}
			}
		})
	}
}
