package coordinator

import (
	"errors"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/clustral/clustral/coordinator/store"
)

func TestAddOffset(t *testing.T) {
	tests := []struct {
		base string
		off  uint64
		want string
	}{
		{"100.64.0.0", 1, "100.64.0.1"},
		{"100.64.0.0", 256, "100.64.1.0"},
		{"100.64.0.0", 0x3fffff, "100.127.255.255"},
		{"fd00::", 0x10001, "fd00::1:1"},
	}
	for _, tt := range tests {
		got := addOffset(netip.MustParseAddr(tt.base), tt.off)
		if got.String() != tt.want {
			t.Errorf("addOffset(%s, %d) = %s, want %s", tt.base, tt.off, got, tt.want)
		}
	}
}

func TestAllocateUniqueStableAndReclaimed(t *testing.T) {
	s, err := store.OpenBolt(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	p4 := netip.MustParsePrefix("100.64.0.0/29") // 6 usable
	p6 := randomULA()
	seen := map[netip.Addr]bool{}
	var first []netip.Prefix
	for i := range 6 {
		var got []netip.Prefix
		err := s.Update(func(tx store.Tx) error {
			var err error
			got, err = allocate(tx, "n", p4, p6)
			return err
		})
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if len(got) != 2 || !p4.Contains(got[0].Addr()) || !p6.Contains(got[1].Addr()) || got[0].Bits() != 32 || got[1].Bits() != 128 {
			t.Fatalf("allocation %d = %v", i, got)
		}
		for _, g := range got {
			if seen[g.Addr()] {
				t.Fatalf("address %s handed out twice", g)
			}
			seen[g.Addr()] = true
		}
		if i == 0 {
			first = got
		}
	}
	err = s.Update(func(tx store.Tx) error { _, err := allocate(tx, "n", p4); return err })
	if !errors.Is(err, errPoolExhausted) {
		t.Fatalf("7th allocation err = %v, want errPoolExhausted", err)
	}
	if err := s.Update(func(tx store.Tx) error { return release(tx, first[:1]) }); err != nil {
		t.Fatal(err)
	}
	var again []netip.Prefix
	if err := s.Update(func(tx store.Tx) error { var err error; again, err = allocate(tx, "m", p4); return err }); err != nil {
		t.Fatalf("after release: %v", err)
	}
	if again[0] != first[0] {
		t.Fatalf("reclaimed = %v, want %v", again[0], first[0])
	}
}
