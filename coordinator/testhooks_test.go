package coordinator

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

// TestConfigNewIDAndAddrRand: with Config.NewID and Config.AddrRand set,
// a new user and device get the ids NewID makes and the addresses at the
// offsets AddrRand gives, so tests can compare output byte for byte.
func TestConfigNewIDAndAddrRand(t *testing.T) {
	var offsets bytes.Buffer
	for range 2 { // the IPv4 address, then the IPv6 one
		binary.Write(&offsets, binary.BigEndian, uint64(9))
	}
	var prefixes []string
	e := newTestEnvWith(t, func(c *Config) {
		c.IPv6Prefix = netip.MustParsePrefix("fd7a:115c:a1e0::/48")
		c.NewID = func(prefix string) string {
			prefixes = append(prefixes, prefix)
			return prefix + "_fixed"
		}
		c.AddrRand = &offsets
	})
	s := e.login("alice@example.com")
	if s.User.ID != "usr_fixed" {
		t.Errorf("user id %q, want usr_fixed", s.User.ID)
	}
	var reg proto.RegisterResponse
	e.must("POST", "/api/v1/devices", s.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t), Hostname: "laptop"}, &reg)
	want := []netip.Prefix{netip.MustParsePrefix("100.64.0.9/32"), netip.MustParsePrefix("fd7a:115c:a1e0::9/128")}
	if reg.NodeID != "dev_fixed" || !slices.Equal(reg.Addresses, want) {
		t.Errorf("device %s %v, want dev_fixed %v", reg.NodeID, reg.Addresses, want)
	}
	if !slices.Equal(prefixes, []string{"usr", "dev"}) {
		t.Errorf("NewID called for %v, want usr, dev", prefixes)
	}
}

// TestNewNodeIDOrdered: node ids lead with the time, so those made one
// after another sort in that order (neighbouring keys in the store),
// and carry newID's 80 random bits, so those made in one millisecond
// differ.
func TestNewNodeIDOrdered(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 7, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		at     []time.Duration
		sorted bool
	}{
		{"milliseconds apart", []time.Duration{0, time.Millisecond, time.Second, time.Hour}, true},
		{"in one millisecond", []time.Duration{0, 0, 0, 0}, false},
	}
	idRE := regexp.MustCompile(`^dev_[0-9a-f]{32}$`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ids []string
			for _, d := range tt.at {
				id := newNodeID("dev", t0.Add(d))
				if !idRE.MatchString(id) {
					t.Fatalf("id %q, want dev_ and 32 hex digits", id)
				}
				if got, want := id[4:16], fmt.Sprintf("%012x", t0.Add(d).UnixMilli()); got != want {
					t.Errorf("id %s leads with %s, want the time %s", id, got, want)
				}
				ids = append(ids, id)
			}
			if tt.sorted && !slices.IsSorted(ids) {
				t.Errorf("ids %v made one after another do not sort in that order", ids)
			}
			if len(slices.Compact(slices.Sorted(slices.Values(ids)))) != len(ids) {
				t.Errorf("ids %v not unique", ids)
			}
		})
	}
}
