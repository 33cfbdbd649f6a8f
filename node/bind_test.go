package node

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/clustral/clustral/proto"
)

func TestParseEndpoint(t *testing.T) {
	key := genKey(t)
	tests := []struct {
		in       string
		wantKey  proto.Key
		wantAddr string
		wantPath Path
		wantErr  bool
	}{
		{in: "192.0.2.1:51820", wantAddr: "192.0.2.1:51820"},
		{in: "[2001:db8::1]:51820", wantAddr: "[2001:db8::1]:51820"},
		{in: "[::ffff:192.0.2.1]:51820", wantAddr: "192.0.2.1:51820"},
		{in: key.Hex() + "@192.0.2.1:51820", wantKey: key, wantAddr: "192.0.2.1:51820"},
		{in: key.Hex() + "@192.0.2.1:51820,[2001:db8::1]:7", wantKey: key, wantAddr: "192.0.2.1:51820"},
		{in: "192.0.2.1", wantErr: true},
		{in: key.Hex() + "@", wantKey: key, wantPath: PathRelay},
		{in: key.Hex()[:10] + "@192.0.2.1:51820", wantErr: true},
		{in: strings.Repeat("zz", 32) + "@192.0.2.1:51820", wantErr: true},
		{in: key.Hex() + "@192.0.2.1:51820,nonsense", wantErr: true},
	}
	b := NewBind()
	for _, tt := range tests {
		ep, err := b.ParseEndpoint(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseEndpoint(%q) err = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		e := ep.(*Endpoint)
		if e.Key() != tt.wantKey || e.DstToString() != tt.wantAddr || e.Path() != tt.wantPath {
			t.Errorf("ParseEndpoint(%q) = key %v dst %s path %v", tt.in, e.Key().ShortString(), e.DstToString(), e.Path())
		}
		if e.DstIP() != e.AddrPort().Addr() || len(e.DstToBytes()) == 0 {
			t.Errorf("ParseEndpoint(%q): inconsistent destination", tt.in)
		}
	}
}

func TestFormatEndpointRoundTrip(t *testing.T) {
	key := genKey(t)
	addrs := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("[2001:db8::2]:2")}
	if got := FormatEndpoint(key, nil); got != "" {
		t.Errorf("FormatEndpoint without addresses = %q", got)
	}
	ep, err := NewBind().ParseEndpoint(FormatEndpoint(key, addrs))
	if err != nil {
		t.Fatal(err)
	}
	e := ep.(*Endpoint)
	if e.Key() != key || len(e.Candidates()) != 2 || e.Candidates()[1] != addrs[1] || e.AddrPort() != addrs[0] {
		t.Errorf("round trip = %v %v", e, e.Candidates())
	}
}

// fakeUDP stands in for the sockets: its receive function reports one
// packet per source in srcs, and Send records the WireGuard datagrams it
// was given (probes go to onProbe, if set).
type fakeUDP struct {
	srcs []netip.AddrPort

	mu      sync.Mutex
	sent    []conn.Endpoint
	batches [][][]byte // the bufs of each Send, as given
	onProbe func(pkt []byte, to netip.AddrPort)
}

func (f *fakeUDP) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fn := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		for i, src := range f.srcs {
			sizes[i] = 100 + i
			eps[i] = &conn.StdNetEndpoint{AddrPort: src}
		}
		sizes[len(f.srcs)] = 0 // an empty slot is not a packet
		return len(f.srcs) + 1, nil
	}
	return []conn.ReceiveFunc{fn}, 4242, nil
}
func (f *fakeUDP) Close() error         { return nil }
func (f *fakeUDP) SetMark(uint32) error { return nil }
func (f *fakeUDP) BatchSize() int       { return 8 }
func (f *fakeUDP) ParseEndpoint(string) (conn.Endpoint, error) {
	return nil, errors.New("not used")
}
func (f *fakeUDP) Send(bufs [][]byte, ep conn.Endpoint) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(bufs) == 1 && proto.IsProbe(bufs[0]) {
		if f.onProbe != nil {
			f.onProbe(bufs[0], ep.(*conn.StdNetEndpoint).AddrPort)
		}
		return nil
	}
	f.sent = append(f.sent, ep)
	f.batches = append(f.batches, bufs)
	return nil
}

func (f *fakeUDP) sentTo(i int) conn.Endpoint {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent[i]
}

func TestBindAttributesPacketsToKeyedEndpoints(t *testing.T) {
	known := netip.MustParseAddrPort("192.0.2.1:51820")
	unknown := netip.MustParseAddrPort("198.51.100.9:4000")
	mapped := netip.MustParseAddrPort("[::ffff:192.0.2.1]:51820") // same as known
	f := &fakeUDP{srcs: []netip.AddrPort{known, unknown, mapped}}
	b := NewBind()
	b.udp = f
	fns, port, err := b.Open(0)
	t.Cleanup(func() { b.Close() })
	if err != nil || port != 4242 || b.Port() != 4242 {
		t.Fatalf("Open = %v, %d", err, port)
	}
	key := genKey(t)
	ep, err := b.ParseEndpoint(FormatEndpoint(key, []netip.AddrPort{known}))
	if err != nil {
		t.Fatal(err)
	}

	receive := func() []conn.Endpoint {
		t.Helper()
		bufs := make([][]byte, 8)
		for i := range bufs {
			bufs[i] = make([]byte, 200)
		}
		sizes := make([]int, 8)
		eps := make([]conn.Endpoint, 8)
		n, err := fns[0](bufs, sizes, eps)
		if err != nil || n != 4 {
			t.Fatalf("receive = %d, %v", n, err)
		}
		return eps[:3]
	}
	eps := receive()
	if eps[0] != ep || eps[2] != ep {
		t.Errorf("packets from the keyed address were not attributed to its endpoint: %v %v", eps[0], eps[2])
	}
	if e := eps[1].(*Endpoint); !e.Key().IsZero() || e.AddrPort() != unknown {
		t.Errorf("unknown source = %v, want a keyless endpoint at %v", e, unknown)
	}
	if stats := b.Stats(PathDirect); stats.RxPackets != 3 || stats.RxBytes != 100+101+102 {
		t.Errorf("rx stats = %+v", stats)
	}

	if err := b.Send([][]byte{make([]byte, 10), make([]byte, 20)}, eps[1]); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.sentTo(0).(*conn.StdNetEndpoint); !ok {
		t.Errorf("inner Send got %T, want *conn.StdNetEndpoint", f.sentTo(0))
	}
	if stats := b.Stats(PathDirect); stats.TxPackets != 2 || stats.TxBytes != 30 {
		t.Errorf("tx stats = %+v", stats)
	}
	if err := b.Send(nil, &conn.StdNetEndpoint{}); !errors.Is(err, conn.ErrWrongEndpointType) {
		t.Errorf("Send to a foreign endpoint: err = %v", err)
	}
	if stats := b.Stats(PathRelay); stats != (PathStats{}) {
		t.Errorf("relay stats = %+v, want none", stats)
	}

	// A newer endpoint for the key replaces the old address; Forget drops it.
	moved := netip.MustParseAddrPort("203.0.113.5:1")
	if _, err := b.ParseEndpoint(FormatEndpoint(key, []netip.AddrPort{moved})); err != nil {
		t.Fatal(err)
	}
	if e := receive()[0].(*Endpoint); !e.Key().IsZero() {
		t.Errorf("old address still attributed to %v", e)
	}
	f.srcs[1] = moved
	if e := receive()[1].(*Endpoint); e.Key() != key {
		t.Errorf("new address not attributed: %v", e)
	}
	b.Forget(key)
	if e := receive()[1].(*Endpoint); !e.Key().IsZero() {
		t.Errorf("forgotten key still attributed: %v", e)
	}
}

// TestBindPassesBatchesThrough: the UDP sockets batch (sendmmsg) and
// offload segmentation (UDP_SEGMENT), coalescing a batch's datagrams into
// the spare capacity of its first buffer and setting the sticky source
// from a *conn.StdNetEndpoint. The Bind must hand them the batch
// wireguard-go gave it, whole and with its bytes unchanged, and such an
// endpoint; only the buffers' capacity is cut to maxGSOBytes.
func TestBindPassesBatchesThrough(t *testing.T) {
	f := &fakeUDP{}
	b := NewBind()
	b.udp = f
	if got, want := b.BatchSize(), f.BatchSize(); got != want {
		t.Errorf("BatchSize = %d, want the sockets' %d", got, want)
	}
	addr := netip.MustParseAddrPort("192.0.2.1:51820")
	for _, s := range []string{addr.String(), FormatEndpoint(genKey(t), []netip.AddrPort{addr})} {
		t.Run(s, func(t *testing.T) {
			ep, err := b.ParseEndpoint(s)
			if err != nil {
				t.Fatal(err)
			}
			bufs := make([][]byte, 5)
			arrays := make([]*byte, len(bufs))
			for i := range bufs {
				bufs[i] = make([]byte, 1452, 1<<16)
				bufs[i][0] = byte(i)
				arrays[i] = &bufs[i][0]
			}
			if err := b.Send(bufs, ep); err != nil {
				t.Fatal(err)
			}
			f.mu.Lock()
			got, to := f.batches[len(f.batches)-1], f.sent[len(f.sent)-1]
			f.mu.Unlock()
			if len(got) != len(bufs) || &got[0] != &bufs[0] {
				t.Errorf("sockets got a batch of %d at %p, want wireguard-go's %d at %p", len(got), &got[0], len(bufs), &bufs[0])
			}
			for i := range got {
				if len(got[i]) != 1452 || cap(got[i]) != maxGSOBytes || &got[i][0] != arrays[i] || got[i][0] != byte(i) {
					t.Errorf("buffer %d: len %d cap %d at %p, want 1452 and %d at %p", i, len(got[i]), cap(got[i]), &got[i][0], maxGSOBytes, arrays[i])
				}
			}
			if d, ok := to.(*conn.StdNetEndpoint); !ok || d.AddrPort != addr {
				t.Errorf("sockets got endpoint %v (%T), want *conn.StdNetEndpoint %v", to, to, addr)
			}
		})
	}
}

// TestBindKeepsGSOMessagesWhole sends one batch of 64 datagrams between
// two Binds on loopback and counts the most a receive call returns. With
// UDP GSO and GRO, a call returns whole GSO messages of up to 64 datagrams
// each. At 1,424 bytes StdNetBind alone would coalesce 46 datagrams into
// 65,504 bytes, past what the kernel sends as one message (maxGSOBytes),
// and the receiver would read them two a call. 1,452 bytes (45 make 65,340)
// shows whether this kernel does GSO and GRO at all.
func TestBindKeepsGSOMessagesWhole(t *testing.T) {
	const batch = 64
	for _, size := range []int{1452, 1424} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			most := maxPerReceive(t, size, batch)
			if most <= 2 {
				if size == 1452 {
					t.Skipf("at most %d datagrams a receive call: no UDP GSO and GRO on loopback here", most)
				}
				t.Fatalf("at most %d datagrams a receive call, want whole GSO messages (at least %d)", most, batch*2/3)
			}
			if most < batch*2/3 {
				t.Errorf("at most %d datagrams a receive call, want whole GSO messages (at least %d)", most, batch*2/3)
			}
		})
	}
}

// maxPerReceive sends n datagrams of size bytes in one Send from one Bind
// to another on 127.0.0.1 and returns the most datagrams one call of the
// receiver's receive function returned.
func maxPerReceive(t *testing.T, size, n int) int {
	t.Helper()
	l := newLoopbackBinds(t, size, n)
	most, err := l.roundTrip()
	if err != nil {
		t.Fatal(err)
	}
	return most
}

// loopbackBinds is a Bind sending to another on 127.0.0.1, with a batch of
// datagrams to send and buffers to receive them.
type loopbackBinds struct {
	tx      *Bind
	ep      conn.Endpoint
	receive conn.ReceiveFunc
	closeRx func()

	bufs, rbufs [][]byte
	sizes       []int
	eps         []conn.Endpoint
}

// newLoopbackBinds opens the two Binds, closed by tb's cleanup, and a batch
// of n datagrams of size bytes.
func newLoopbackBinds(tb testing.TB, size, n int) *loopbackBinds {
	tb.Helper()
	tx, rx := NewBind(), NewBind()
	if _, _, err := tx.Open(0); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tx.Close() })
	fns, port, err := rx.Open(0)
	if err != nil {
		tb.Fatal(err)
	}
	l := &loopbackBinds{tx: tx, receive: fns[0], closeRx: sync.OnceFunc(func() { rx.Close() })}
	tb.Cleanup(l.closeRx)
	if l.ep, err = tx.ParseEndpoint(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String()); err != nil {
		tb.Fatal(err)
	}
	l.bufs = make([][]byte, n)
	for i := range l.bufs {
		l.bufs[i] = make([]byte, size, 1<<16)
		l.bufs[i][0] = 4 // a WireGuard data message, not a probe
	}
	l.rbufs = make([][]byte, tx.BatchSize())
	for i := range l.rbufs {
		l.rbufs[i] = make([]byte, 1<<16)
	}
	l.sizes = make([]int, len(l.rbufs))
	l.eps = make([]conn.Endpoint, len(l.rbufs))
	return l
}

// roundTrip sends the batch in one Send and receives it, and returns the
// most datagrams one receive call returned. When datagrams are lost it
// closes the receiver and fails after 10 seconds.
func (l *loopbackBinds) roundTrip() (int, error) {
	if err := l.tx.Send(l.bufs, l.ep); err != nil {
		return 0, err
	}
	type result struct {
		most int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		most, _, err := l.receiveAll()
		done <- result{most, err}
	}()
	select {
	case r := <-done:
		return r.most, r.err
	case <-time.After(10 * time.Second):
		l.closeRx()
		r := <-done
		return 0, fmt.Errorf("datagrams lost: receive ended with %v", r.err)
	}
}

// receiveAll receives as many datagrams as a batch holds and reports the
// most one call returned and the calls it took.
func (l *loopbackBinds) receiveAll() (most, calls int, err error) {
	for got := 0; got < len(l.bufs); calls++ {
		k, err := l.receive(l.rbufs, l.sizes, l.eps)
		if err != nil {
			return most, calls, err
		}
		got += k
		most = max(most, k)
	}
	return most, calls, nil
}

// BenchmarkBindLoopback moves batches of 64 WireGuard-sized datagrams
// between two Binds on loopback, one Send and the receive calls it takes
// per op; datagrams/call is the receiver's batch.
func BenchmarkBindLoopback(b *testing.B) {
	const n = 64
	for _, size := range []int{1424, 1452} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			l := newLoopbackBinds(b, size, n)
			b.SetBytes(int64(size * n))
			calls := 0
			for b.Loop() {
				if err := l.tx.Send(l.bufs, l.ep); err != nil {
					b.Fatal(err)
				}
				_, k, err := l.receiveAll()
				if err != nil {
					b.Fatal(err)
				}
				calls += k
			}
			b.ReportMetric(float64(b.N*n)/float64(calls), "datagrams/call")
		})
	}
}

func TestLearnPingsBackWithoutDirectPath(t *testing.T) {
	addr := netip.MustParseAddrPort("192.0.2.1:51820")
	pp := &peerPath{published: []netip.AddrPort{addr}}
	if !pp.learn(addr) {
		t.Fatal("a ping from a known address with no direct path and no recent round must probe now")
	}
	pp.lastPing = time.Now()
	if pp.learn(addr) {
		t.Fatal("a second ping right after a round must not probe again")
	}
	pp.lastPing = time.Time{}
	pp.cur.Store(&conn.StdNetEndpoint{AddrPort: addr})
	if pp.learn(addr) {
		t.Fatal("with a direct path up, a ping from a known address needs no probe")
	}
	if other := netip.MustParseAddrPort("192.0.2.2:51820"); !pp.learn(other) {
		t.Fatal("a new address is always probed")
	}
}

// TestCloseWaitsForProbing: Close returns only after the probing goroutine
// Open started has, so nothing the Bind started outlives it. In a synctest
// bubble, a probe held inside Send keeps that goroutine running.
func TestCloseWaitsForProbing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sending, release := make(chan struct{}, 1), make(chan struct{})
		releaseSend := sync.OnceFunc(func() { close(release) })
		defer releaseSend() // on failure too, so the bubble can end
		f := &fakeUDP{onProbe: func([]byte, netip.AddrPort) {
			select {
			case sending <- struct{}{}:
			default:
			}
			<-release
		}}
		b := NewBind()
		b.udp = f
		keyBind(t, b)
		if _, _, err := b.Open(0); err != nil {
			t.Fatal(err)
		}
		if _, err := b.ParseEndpoint(FormatEndpoint(genKey(t), []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:1000")})); err != nil {
			t.Fatal(err)
		}
		<-sending // the probing goroutine is inside Send

		closed := make(chan struct{})
		go func() {
			b.Close()
			close(closed)
		}()
		synctest.Wait()
		select {
		case <-closed:
			t.Fatal("Close returned while its probing goroutine was still sending")
		default:
		}
		releaseSend()
		<-closed
	})
}
