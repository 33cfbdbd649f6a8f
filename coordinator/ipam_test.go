package coordinator

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/coordinator/store/storetest"
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

// allocateIn allocates for nodeID in a transaction of st and marks the
// addresses in use, as registration does once the transaction committed.
func allocateIn(t *testing.T, st store.Store, m *ipam, nodeID string) ([]netip.Prefix, error) {
	t.Helper()
	var got []netip.Prefix
	err := st.Update(func(tx store.Tx) error {
		var err error
		got, err = m.allocate(tx, nodeID)
		return err
	})
	if err == nil {
		for _, p := range got {
			m.use(p.Addr())
		}
	}
	return got, err
}

func TestAllocateUniqueStableAndReclaimed(t *testing.T) {
	s := storetest.OpenBolt(t)
	p4 := netip.MustParsePrefix("100.64.0.0/29") // 6 usable
	p6 := randomULA()
	m := newIPAM(p4, p6)
	seen := map[netip.Addr]bool{}
	var first []netip.Prefix
	for i := range 6 {
		got, err := allocateIn(t, s, m, "n")
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if len(got) != 2 || !p4.Contains(got[0].Addr()) || !p6.Contains(got[1].Addr()) || got[0].Bits() != 32 || got[1].Bits() != 128 {
			t.Fatalf("allocation %d = %v", i, got)
		}
		if a := got[0].Addr(); a == p4.Addr() || a == netip.MustParseAddr("100.64.0.7") {
			t.Fatalf("allocation %d handed out the reserved %s", i, a)
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
	if _, err := allocateIn(t, s, newIPAMFrom(t, s, p4), "n"); !errors.Is(err, errPoolExhausted) {
		t.Fatalf("7th allocation (index rebuilt from the store) err = %v, want errPoolExhausted", err)
	}
	if err := s.Update(func(tx store.Tx) error { return release(tx, first[:1]) }); err != nil {
		t.Fatal(err)
	}
	m.free(first[0].Addr())
	again, err := allocateIn(t, s, m, "m")
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	if again[0] != first[0] {
		t.Fatalf("reclaimed = %v, want %v", again[0], first[0])
	}
}

// TestAllocateNextFit: each search goes on where the last one left off,
// so addresses handed out one after another are neighbours (their store
// keys share a page), and a freed address is handed out again only once
// the searches have gone round the prefix, wrapping at its end.
func TestAllocateNextFit(t *testing.T) {
	s := storetest.OpenBolt(t)
	p4 := netip.MustParsePrefix("100.64.0.0/29") // 6 usable: .1 to .6
	p6 := netip.MustParsePrefix("fd7a:115c:a1e0::/48")
	m := newIPAM(p4, p6)
	m.pools[0].next, m.pools[1].next = 4, 0x10
	var got []string
	allocate := func() {
		t.Helper()
		addrs, err := allocateIn(t, s, m, "n")
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, addrs[0].Addr().String()+" "+addrs[1].Addr().String())
	}
	allocate() // .4
	allocate() // .5
	if err := s.Update(func(tx store.Tx) error { return release(tx, []netip.Prefix{netip.MustParsePrefix("100.64.0.4/32")}) }); err != nil {
		t.Fatal(err)
	}
	m.free(netip.MustParseAddr("100.64.0.4"))
	for range 5 {
		allocate() // .6, then round past the reserved .7 and .0
	}
	want := []string{
		"100.64.0.4 fd7a:115c:a1e0::10",
		"100.64.0.5 fd7a:115c:a1e0::11",
		"100.64.0.6 fd7a:115c:a1e0::12",
		"100.64.0.1 fd7a:115c:a1e0::13",
		"100.64.0.2 fd7a:115c:a1e0::14",
		"100.64.0.3 fd7a:115c:a1e0::15",
		"100.64.0.4 fd7a:115c:a1e0::16", // freed, last
	}
	if !slices.Equal(got, want) {
		t.Errorf("handed out\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// newIPAMFrom is an index of prefixes loaded from st.
func newIPAMFrom(t *testing.T, st store.Store, prefixes ...netip.Prefix) *ipam {
	t.Helper()
	m := newIPAM(prefixes...)
	if err := st.View(m.loadAddresses); err != nil {
		t.Fatal(err)
	}
	return m
}

// countingTx counts the keys a transaction reads.
type countingTx struct {
	store.Tx
	reads int
}

func (c *countingTx) GetRaw(b store.Bucket, k string) ([]byte, error) {
	c.reads++
	return c.Tx.GetRaw(b, k)
}

// TestAllocateNearlyFullPoolReadsOneKey: with all but one address of a
// /20 in use, finding the free one reads one key in the write
// transaction, not thousands; a full pool reads none.
func TestAllocateNearlyFullPoolReadsOneKey(t *testing.T) {
	st := storetest.OpenBolt(t)
	p4 := netip.MustParsePrefix("10.1.64.0/20")
	free := netip.MustParseAddr("10.1.77.3") // in the middle
	err := st.Update(func(tx store.Tx) error {
		for a := p4.Addr(); p4.Contains(a); a = a.Next() {
			if a != free {
				if err := tx.PutRaw(store.Addresses, a.String(), []byte("n")); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m := newIPAMFrom(t, st, p4)
	for _, tt := range []struct {
		name  string
		want  netip.Addr
		reads int
	}{
		{"last free address", free, 1},
		{"full pool", netip.Addr{}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var ct *countingTx
			var got []netip.Prefix
			err := st.Update(func(tx store.Tx) error {
				ct = &countingTx{Tx: tx}
				var err error
				got, err = m.allocate(ct, "new")
				return err
			})
			if tt.want.IsValid() && (err != nil || got[0].Addr() != tt.want) || !tt.want.IsValid() && !errors.Is(err, errPoolExhausted) {
				t.Fatalf("allocate = %v, %v; want %v", got, err, tt.want)
			}
			if ct.reads != tt.reads {
				t.Fatalf("allocation read %d keys in the write transaction, want %d", ct.reads, tt.reads)
			}
			if err == nil {
				m.use(got[0].Addr())
			}
		})
	}
}

func TestAddrPoolOffsets(t *testing.T) {
	for _, p := range []string{"100.64.0.0/10", "10.0.0.0/24", "fd00:1:2::/48", "fd00:1:2:3::/64", "0.0.0.0/0"} {
		pool := newAddrPool(netip.MustParsePrefix(p))
		for _, off := range []uint64{1, 255, 256, 0x3fff, pool.size - 2} {
			if off >= pool.size {
				continue
			}
			if got := pool.offset(addOffset(pool.prefix.Addr(), off)); got != off {
				t.Errorf("%s: offset(addOffset(%d)) = %d", p, off, got)
			}
		}
	}
}
