package mesh

import (
	"context"
	"net/netip"
	"strings"
	"testing"
)

func TestSanitizeHostname(t *testing.T) {
	tests := []struct{ in, want string }{
		{"laptop-7.example.com", "laptop-7.example.com"},
		{"Alice's MacBook Pro", "AlicesMacBookPro"},
		{"", "device"},
		{"ünïcödé", "ncd"},
		{"%%%", "device"},
		{strings.Repeat("a", 100), strings.Repeat("a", 63)},
	}
	for _, tt := range tests {
		if got := sanitizeHostname(tt.in); got != tt.want {
			t.Errorf("sanitizeHostname(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestResolveUDP(t *testing.T) {
	tests := []struct {
		in      string
		want    netip.AddrPort
		wantErr string
	}{
		{"203.0.113.7:3478", netip.MustParseAddrPort("203.0.113.7:3478"), ""},
		{"[::ffff:203.0.113.7]:3478", netip.MustParseAddrPort("203.0.113.7:3478"), ""},
		{"203.0.113.7", netip.AddrPort{}, `discovery address "203.0.113.7"`},
		{"203.0.113.7:99999", netip.AddrPort{}, "bad port"},
		{"203.0.113.7:stun", netip.AddrPort{}, "bad port"},
	}
	for _, tt := range tests {
		got, err := resolveUDP(context.Background(), tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("resolveUDP(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("resolveUDP(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

// TestEndpointsObservedFirst: the observed public endpoint leads the
// list once known, and setObserved reports only changes.
func TestEndpointsObservedFirst(t *testing.T) {
	e := &endpoints{port: func() uint16 { return 51820 }}
	obs := netip.MustParseAddrPort("203.0.113.7:40000")
	for _, ep := range e.list() {
		if ep.Port() != 51820 {
			t.Fatalf("local endpoint %v not on the listen port", ep)
		}
	}
	if !e.setObserved(obs) {
		t.Fatal("first observation not reported as a change")
	}
	if e.setObserved(obs) {
		t.Fatal("the same observation reported as a change")
	}
	if got := e.list(); len(got) == 0 || got[0] != obs {
		t.Fatalf("list() = %v, want %v first", got, obs)
	}
}
