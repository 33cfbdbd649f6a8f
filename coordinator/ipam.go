package coordinator

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net/netip"
	"sync"

	"github.com/clustral/clustral/coordinator/store"
)

// errPoolExhausted is returned when an overlay prefix has no free address.
var errPoolExhausted = errors.New("overlay address pool exhausted")

// ipam is the in-memory index of the overlay addresses in use, one pool
// per overlay prefix, so that finding a free address costs no store reads:
// a write transaction reads one key per address it hands out (to confirm
// it is free) however full the pool is. The store (address → node id)
// stays the record: addresses are unique and stable across restarts and
// free again when the node is deleted. It has its own lock, so that a
// registration allocates in its store transaction without Server.mu
// (registerNode); it is never held while taking another.
type ipam struct {
	mu    sync.Mutex
	pools []*addrPool
}

// withRand makes m's pools draw where each search starts from r
// (Config.AddrRand) instead of going on where the last one left off;
// nil keeps that.
func (m *ipam) withRand(r io.Reader) *ipam {
	if r != nil {
		for _, p := range m.pools {
			p.rand = r
		}
	}
	return m
}

func newIPAM(prefixes ...netip.Prefix) *ipam {
	m := &ipam{}
	for _, p := range prefixes {
		m.pools = append(m.pools, newAddrPool(p))
	}
	return m
}

// use marks a as in use, in the pool whose prefix holds it. A nil ipam
// ignores it.
func (m *ipam) use(a netip.Addr) { m.mark(a, true) }

// free marks a as free.
func (m *ipam) free(a netip.Addr) { m.mark(a, false) }

// mark marks a as in use or free, in the pool whose prefix holds it. A
// nil ipam ignores it.
func (m *ipam) mark(a netip.Addr, used bool) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.pools {
		if p.prefix.Contains(a) {
			p.set(p.offset(a), used)
		}
	}
}

// maxConfirm bounds the candidates one allocation confirms in the store;
// a candidate is taken only when the index and the store disagree.
const maxConfirm = 8

// allocate reserves one free address in each pool for nodeID, inside tx,
// and marks each in use at once, so that a concurrent transaction does
// not pick it too. The caller frees (free) those of a transaction that
// did not commit; marking a committed one in use again (use) is harmless.
func (m *ipam) allocate(tx store.Tx, nodeID string) ([]netip.Prefix, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []netip.Prefix
	for _, p := range m.pools {
		a, err := p.allocate(tx, nodeID, m)
		if err != nil {
			return nil, err
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// addrPool is the index of one prefix. Prefixes of up to 2^24 addresses
// (an IPv4 /8) keep a bitmap, in which a free address is found by a
// scan of 64-bit words; larger ones (IPv6) keep the used offsets in a map
// and probe, which finds a free one at once while the pool is far from
// full, as a /64 always is.
//
// A search starts where the last one left off (next fit), from a random
// place in a new pool: an address freed is handed out again only once
// the searches have gone round the whole prefix, and addresses handed
// out one after another are neighbours, whose keys in the store's
// Addresses bucket share a page (a burst of registrations writes a few
// pages of it, not one each).
type addrPool struct {
	prefix netip.Prefix
	size   uint64 // addresses in the prefix, at most 2^62
	used   uint64 // offsets in use, the two reserved ones included
	bits   []uint64
	sparse map[uint64]bool
	next   uint64    // where the next search starts
	rand   io.Reader // if set, where each search starts instead of next
}

// maxBitmapBits bounds the prefixes indexed by a bitmap.
const maxBitmapBits = 24

func newAddrPool(p netip.Prefix) *addrPool {
	p = p.Masked()
	hostBits := min(p.Addr().BitLen()-p.Bits(), 62)
	ap := &addrPool{prefix: p, size: uint64(1) << hostBits}
	if hostBits <= maxBitmapBits {
		ap.bits = make([]uint64, (ap.size+63)/64)
	} else {
		ap.sparse = map[uint64]bool{}
	}
	// The network and the broadcast-like last address are never handed
	// out.
	ap.set(0, true)
	ap.set(ap.size-1, true)
	var rb [8]byte
	rand.Read(rb[:])
	ap.next = beUint64(rb[:]) % ap.size
	return ap
}

func (p *addrPool) offset(a netip.Addr) uint64 {
	b, base := a.As16(), p.prefix.Addr().As16()
	var off uint64
	for i := 8; i < 16; i++ {
		off = off<<8 | uint64(b[i]-base[i])
	}
	return off & (p.size - 1)
}

func (p *addrPool) isSet(off uint64) bool {
	if p.bits != nil {
		return p.bits[off/64]&(1<<(off%64)) != 0
	}
	return p.sparse[off]
}

func (p *addrPool) set(off uint64, used bool) {
	if off >= p.size || p.isSet(off) == used {
		return
	}
	if used {
		p.used++
	} else {
		p.used--
	}
	if p.bits != nil {
		p.bits[off/64] ^= 1 << (off % 64)
		return
	}
	if used {
		p.sparse[off] = true
	} else {
		delete(p.sparse, off)
	}
}

// maxSparseProbes bounds the random probes in a sparse pool.
const maxSparseProbes = 64

// candidate returns a free offset, searching from p.next (or where
// p.rand says), or false when the pool is full.
func (p *addrPool) candidate() (uint64, bool) {
	if p.used >= p.size {
		return 0, false
	}
	start := p.next % p.size
	if p.rand != nil {
		var rb [8]byte
		io.ReadFull(p.rand, rb[:]) // a short read starts at 0
		start = beUint64(rb[:]) % p.size
	}
	if p.bits == nil {
		for i := uint64(0); i < maxSparseProbes; i++ {
			off := (start + i*0x9e3779b97f4a7c15) % p.size
			if !p.sparse[off] {
				return off, true
			}
		}
		return 0, false
	}
	words := uint64(len(p.bits))
	w0 := start / 64
	for i := uint64(0); i <= words; i++ {
		w := (w0 + i) % words
		free := ^p.bits[w]
		if i == 0 {
			free &= ^uint64(0) << (start % 64) // from start on in its word
		}
		if w == words-1 && p.size%64 != 0 {
			free &= 1<<(p.size%64) - 1 // past the end of a small prefix
		}
		if free != 0 {
			return w*64 + uint64(bits.TrailingZeros64(free)), true
		}
	}
	return 0, false
}

func (p *addrPool) allocate(tx store.Tx, nodeID string, m *ipam) (netip.Addr, error) {
	for range maxConfirm {
		off, ok := p.candidate()
		if !ok {
			break
		}
		a := addOffset(p.prefix.Addr(), off)
		key := a.String()
		if _, err := tx.GetRaw(store.Addresses, key); err == nil {
			// The store knows better: an address without a node.
			p.set(off, true)
			continue
		} else if !errors.Is(err, store.ErrNotFound) {
			return netip.Addr{}, err
		}
		if err := tx.PutRaw(store.Addresses, key, []byte(nodeID)); err != nil {
			return netip.Addr{}, fmt.Errorf("reserve %s: %w", a, err)
		}
		p.set(off, true)
		p.next = off + 1
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("%w: %s", errPoolExhausted, p.prefix)
}

// loadAddresses marks every address the store holds as in use.
func (m *ipam) loadAddresses(tx store.Tx) error {
	return tx.ForEach(store.Addresses, func(k string, _ []byte) error {
		a, err := netip.ParseAddr(k)
		if err != nil {
			return fmt.Errorf("stored overlay address %q: %w", k, err)
		}
		m.use(a)
		return nil
	})
}

// deleteNode removes n from the store and frees its overlay addresses,
// inside tx.
func deleteNode(tx store.Tx, n *node) error {
	if err := tx.Delete(store.Nodes, n.ID); err != nil {
		return fmt.Errorf("delete node %s: %w", n.ID, err)
	}
	if err := tx.Delete(store.Live, n.ID); err != nil { // an agent's live sessions (live.go)
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
