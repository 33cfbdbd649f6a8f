package cli

import (
	"slices"
	"strings"
	"testing"

	"github.com/clustral/clustral/proto"
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

// FuzzParseWindow parses arbitrary --window values: an accepted window
// must print (as roles show does) to a string that parses back to the
// same window, so what an admin reads is what the agent enforces.
func FuzzParseWindow(f *testing.F) {
	for _, s := range []string{
		"mon-fri 09:00-18:00 Europe/Berlin", "sat,sun 10:00-14:00", "fri-mon 22:00-06:00 UTC", "daily 00:00-24:00",
		"* 23:00-01:00 Asia/Kolkata", "monday-sunday 08:00-09:00", "mon,mon 09:00-10:00", "sun-sat 00:00-23:59 Local",
		"mon-fri 9-18", "someday 09:00-10:00", "mon 09:00", "", "mon 09:00-10:00 Europe/Berlin extra",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tw, err := parseWindow(s)
		if err != nil {
			if !strings.Contains(err.Error(), "time window") {
				t.Fatalf("%q: error %q does not name the window", s, err)
			}
			return
		}
		back, err := parseWindow(tw.String())
		if err != nil {
			t.Fatalf("%q parsed to %+v, whose String %q does not parse: %v", s, tw, tw.String(), err)
		}
		w1, err1 := proto.ParseWindow(tw)
		w2, err2 := proto.ParseWindow(back)
		if err1 != nil || err2 != nil || w1 != w2 {
			t.Fatalf("%q: %+v and its round trip %+v differ (%v, %v)", s, tw, back, err1, err2)
		}
	})
}
