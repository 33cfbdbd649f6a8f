package main

import (
	"slices"
	"strings"
	"testing"
)

func TestParseWindow(t *testing.T) {
	tests := []struct {
		in       string
		wantDays []string
		wantErr  string
	}{
		{"mon-fri 09:00-18:00 Europe/Berlin", []string{"mon", "tue", "wed", "thu", "fri"}, ""},
		{"sat,sun 10:00-14:00", []string{"sat", "sun"}, ""},
		{"fri-mon 22:00-06:00 UTC", []string{"fri", "sat", "sun", "mon"}, ""},
		{"daily 00:00-23:59", nil, ""},
		{"mon-fri 9-18", nil, "HH:MM"},
		{"someday 09:00-10:00", nil, "unknown day"},
		{"mon 09:00-10:00 Nowhere/Land", nil, "IANA"},
		{"mon", nil, "use"},
	}
	for _, tt := range tests {
		w, err := parseWindow(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseWindow(%q) err = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseWindow(%q): %v", tt.in, err)
			continue
		}
		if !slices.Equal(w.Days, tt.wantDays) {
			t.Errorf("parseWindow(%q) days = %v, want %v", tt.in, w.Days, tt.wantDays)
		}
	}
}

// TestWindowRoundTrip checks that TimeWindow.String, which tables and the
// agent's denials print, reads back as the same window.
func TestWindowRoundTrip(t *testing.T) {
	tests := []struct{ in, want string }{
		{"mon-fri 09:00-18:00 Europe/Berlin", "mon,tue,wed,thu,fri 09:00-18:00 Europe/Berlin"},
		{"sat,sun 10:00-14:00", "sat,sun 10:00-14:00 UTC"},
		{"daily 22:00-06:00 UTC", "daily 22:00-06:00 UTC"},
	}
	for _, tt := range tests {
		w, err := parseWindow(tt.in)
		if err != nil {
			t.Fatalf("parseWindow(%q): %v", tt.in, err)
		}
		if got := w.String(); got != tt.want {
			t.Errorf("parseWindow(%q).String() = %q, want %q", tt.in, got, tt.want)
		}
		back, err := parseWindow(w.String())
		if err != nil {
			t.Fatalf("parseWindow(%q): %v", w.String(), err)
		}
		if back.String() != w.String() {
			t.Errorf("%q read back as %q", w.String(), back.String())
		}
	}
}
