package coordinator

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"

	"github.com/clustral/clustral/coordinator/store"
)

// errPoolExhausted is returned when an overlay prefix has no free address.
var errPoolExhausted = errors.New("overlay address pool exhausted")

// allocate reserves one free address in each overlay prefix for nodeID,
// inside tx. Addresses are kept in the store (address → node id), so they
// are unique and stable across restarts, and free again when the node is
// deleted. The search starts at a random offset so that a reclaimed address
// is not handed out again at once.
func allocate(tx store.Tx, nodeID string, prefixes ...netip.Prefix) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, p := range prefixes {
		a, err := allocateOne(tx, nodeID, p)
		if err != nil {
			return nil, err
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// maxProbe bounds the search for a free address.
const maxProbe = 1 << 20

func allocateOne(tx store.Tx, nodeID string, p netip.Prefix) (netip.Addr, error) {
	p = p.Masked()
	hostBits := p.Addr().BitLen() - p.Bits()
	if hostBits > 62 {
		hostBits = 62
	}
	size := uint64(1) << hostBits
	var rb [8]byte
	rand.Read(rb[:])
	start := beUint64(rb[:]) % size
	probes := min(size, maxProbe)
	for i := uint64(0); i < probes; i++ {
		off := (start + i) % size
		if off == 0 || off == size-1 {
			continue // network and broadcast-like addresses
		}
		a := addOffset(p.Addr(), off)
		key := a.String()
		if _, err := tx.GetRaw(store.Addresses, key); err == nil {
			continue
		} else if !errors.Is(err, store.ErrNotFound) {
			return netip.Addr{}, err
		}
		if err := tx.PutRaw(store.Addresses, key, []byte(nodeID)); err != nil {
			return netip.Addr{}, fmt.Errorf("reserve %s: %w", a, err)
		}
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("%w: %s", errPoolExhausted, p)
}

// deleteNode removes n from the store and frees its overlay addresses,
// inside tx.
func deleteNode(tx store.Tx, n *node) error {
	if err := tx.Delete(store.Nodes, n.ID); err != nil {
		return fmt.Errorf("delete node %s: %w", n.ID, err)
	}
	return release(tx, n.Addresses)
}

// deleteNodes deletes each of ns as deleteNode does, inside tx, stopping
// at the first error.
func deleteNodes(tx store.Tx, ns []*node) error {
	for _, n := range ns {
		if err := deleteNode(tx, n); err != nil {
			return err
		}
	}
	return nil
}

// release frees addrs inside tx.
func release(tx store.Tx, addrs []netip.Prefix) error {
	for _, p := range addrs {
		if err := tx.Delete(store.Addresses, p.Addr().String()); err != nil {
			return err
		}
	}
	return nil
}

func beUint64(b []byte) uint64 {
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v
}

// addOffset returns a + off, for off below 2^62.
func addOffset(a netip.Addr, off uint64) netip.Addr {
	b := a.As16()
	carry := off
	for i := 15; i >= 0 && carry > 0; i-- {
		s := uint64(b[i]) + (carry & 0xff)
		b[i] = byte(s)
		carry = carry>>8 + s>>8
	}
	r := netip.AddrFrom16(b)
	if a.Is4() {
		return r.Unmap()
	}
	return r
}

// randomULA returns a random unique local /48 (RFC 4193).
func randomULA() netip.Prefix {
	var b [16]byte
	b[0] = 0xfd
	rand.Read(b[1:6])
	return netip.PrefixFrom(netip.AddrFrom16(b), 48)
}
