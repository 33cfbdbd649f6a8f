package coordinator

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

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
