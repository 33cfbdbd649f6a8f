package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/clustral/clustral/pkg/testkit"
)

// TestMain fails the package's tests if any of them leaves a goroutine
// running.
func TestMain(m *testing.M) { testkit.VerifyNoLeaks(m) }

// mapZone is a Zone over a map the test may change.
type mapZone struct {
	mu     sync.Mutex
	domain string
	names  map[string][]netip.Addr
	err    error // returned by every Lookup when set
}

func (z *mapZone) Domain() string {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.domain
}

func (z *mapZone) Lookup(name string) ([]netip.Addr, error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.err != nil {
		return nil, z.err
	}
	addrs, ok := z.names[name]
	if !ok {
		return nil, ErrNoSuchName
	}
	return addrs, nil
}

func (z *mapZone) set(name string, addrs ...netip.Addr) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if addrs == nil {
		delete(z.names, name)
		return
	}
	z.names[name] = addrs
}

func testZone() *mapZone {
	return &mapZone{domain: "clustral.internal", names: map[string][]netip.Addr{
		"prod.clustral.internal": {netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("fd7a::2"), netip.MustParseAddr("100.64.0.3")},
		"v4.clustral.internal":   {netip.MustParseAddr("100.64.0.4")},
	}}
}

// query packs one question, with an EDNS0 record if udpSize > 0.
func query(t testing.TB, name string, typ dnsmessage.Type, udpSize int) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x4242, RecursionDesired: true})
	must(t, b.StartQuestions())
	must(t, b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}))
	if udpSize > 0 {
		must(t, b.StartAdditionals())
		var h dnsmessage.ResourceHeader
		must(t, h.SetEDNS0(udpSize, dnsmessage.RCodeSuccess, false))
		must(t, b.OPTResource(h, dnsmessage.OPTResource{}))
	}
	msg, err := b.Finish()
	must(t, err)
	return msg
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// reply is what a test reads from an answer.
type reply struct {
	msg       dnsmessage.Message
	addrs     []string // the A and AAAA answers, in order
	soa       bool     // an SOA in the authority section
	soaAnswer bool     // an SOA in the answer section
}

func parse(t testing.TB, b []byte) reply {
	t.Helper()
	var r reply
	if err := r.msg.Unpack(b); err != nil {
		t.Fatalf("the answer does not parse: %v", err)
	}
	for _, a := range r.msg.Answers {
		switch body := a.Body.(type) {
		case *dnsmessage.AResource:
			r.addrs = append(r.addrs, netip.AddrFrom4(body.A).String())
		case *dnsmessage.AAAAResource:
			r.addrs = append(r.addrs, netip.AddrFrom16(body.AAAA).String())
		case *dnsmessage.SOAResource:
			r.soaAnswer = true
		}
		if a.Header.TTL != TTL {
			t.Errorf("answer TTL %d, want %d", a.Header.TTL, TTL)
		}
	}
	for _, a := range r.msg.Authorities {
		_, r.soa = a.Body.(*dnsmessage.SOAResource)
	}
	return r
}

// TestAnswer is the resolver's behaviour, one query at a time.
func TestAnswer(t *testing.T) {
	tests := []struct {
		name      string
		qname     string
		qtype     dnsmessage.Type
		rcode     dnsmessage.RCode
		addrs     []string
		soa       bool // SOA in the authority section (NXDOMAIN, NODATA)
		soaAnswer bool
		aa        bool
	}{
		{"A of a cluster, every agent in order", "prod.clustral.internal.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, []string{"100.64.0.2", "100.64.0.3"}, false, false, true},
		{"AAAA of a cluster", "prod.clustral.internal.", dnsmessage.TypeAAAA, dnsmessage.RCodeSuccess, []string{"fd7a::2"}, false, false, true},
		{"any case", "PrOd.CLUSTRAL.internal.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, []string{"100.64.0.2", "100.64.0.3"}, false, false, true},
		{"ANY gives both families", "v4.clustral.internal.", dnsmessage.TypeALL, dnsmessage.RCodeSuccess, []string{"100.64.0.4"}, false, false, true},
		{"no AAAA: NODATA with the SOA", "v4.clustral.internal.", dnsmessage.TypeAAAA, dnsmessage.RCodeSuccess, nil, true, false, true},
		{"other type: NODATA", "prod.clustral.internal.", dnsmessage.TypeMX, dnsmessage.RCodeSuccess, nil, true, false, true},
		{"unknown cluster: NXDOMAIN", "staging.clustral.internal.", dnsmessage.TypeA, dnsmessage.RCodeNameError, nil, true, false, true},
		{"below a cluster: NXDOMAIN", "x.prod.clustral.internal.", dnsmessage.TypeA, dnsmessage.RCodeNameError, nil, true, false, true},
		{"apex SOA", "clustral.internal.", dnsmessage.TypeSOA, dnsmessage.RCodeSuccess, nil, false, true, true},
		{"apex A: NODATA", "clustral.internal.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, nil, true, false, true},
		{"outside the zone: REFUSED, no recursion", "example.com.", dnsmessage.TypeA, dnsmessage.RCodeRefused, nil, false, false, false},
		{"suffix without a dot: REFUSED", "prodclustral.internal.", dnsmessage.TypeA, dnsmessage.RCodeRefused, nil, false, false, false},
		{"parent of the zone: REFUSED", "internal.", dnsmessage.TypeA, dnsmessage.RCodeRefused, nil, false, false, false},
		{"root: REFUSED", ".", dnsmessage.TypeNS, dnsmessage.RCodeRefused, nil, false, false, false},
	}
	s := &Server{Zone: testZone()}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, edns := range []int{0, 1232} {
				r := parse(t, s.Answer(query(t, tt.qname, tt.qtype, edns), udpLimit))
				h := r.msg.Header
				if h.ID != 0x4242 || !h.Response || !h.RecursionDesired || h.RecursionAvailable {
					t.Errorf("header %+v: want the query's id, response, RD echoed, no RA", h)
				}
				if h.RCode != tt.rcode || h.Authoritative != tt.aa {
					t.Errorf("rcode %v aa %v, want %v aa %v", h.RCode, h.Authoritative, tt.rcode, tt.aa)
				}
				if !slices.Equal(r.addrs, tt.addrs) || r.soa != tt.soa || r.soaAnswer != tt.soaAnswer {
					t.Errorf("answers %v, SOA in authority %v, in answers %v; want %v, %v, %v", r.addrs, r.soa, r.soaAnswer, tt.addrs, tt.soa, tt.soaAnswer)
				}
				if len(r.msg.Questions) != 1 || r.msg.Questions[0].Name.String() != tt.qname {
					t.Errorf("questions %v, want the query's, as asked", r.msg.Questions)
				}
				if hasOPT := slices.ContainsFunc(r.msg.Additionals, func(a dnsmessage.Resource) bool { return a.Header.Type == dnsmessage.TypeOPT }); hasOPT != (edns > 0) {
					t.Errorf("OPT in the answer %v, want %v", hasOPT, edns > 0)
				}
			}
		})
	}
}

// TestAnswerMalformed: what is not a single plain query gets FORMERR,
// NOTIMP or no answer, never records.
func TestAnswerMalformed(t *testing.T) {
	s := &Server{Zone: testZone()}
	ok := query(t, "prod.clustral.internal.", dnsmessage.TypeA, 0)
	withHeader := func(mod func(*dnsmessage.Header)) []byte {
		var m dnsmessage.Message
		must(t, m.Unpack(ok))
		mod(&m.Header)
		b, err := m.Pack()
		must(t, err)
		return b
	}
	twoQuestions := func() []byte {
		var m dnsmessage.Message
		must(t, m.Unpack(ok))
		m.Questions = append(m.Questions, m.Questions[0])
		b, err := m.Pack()
		must(t, err)
		return b
	}()
	twoOPT := func() []byte {
		var m dnsmessage.Message
		must(t, m.Unpack(query(t, "prod.clustral.internal.", dnsmessage.TypeA, 1232)))
		m.Additionals = append(m.Additionals, m.Additionals[0])
		b, err := m.Pack()
		must(t, err)
		return b
	}()
	tests := []struct {
		name  string
		msg   []byte
		rcode dnsmessage.RCode
		none  bool // no answer at all
	}{
		{"empty", nil, 0, true},
		{"short header", ok[:5], 0, true},
		{"a response", withHeader(func(h *dnsmessage.Header) { h.Response = true }), 0, true},
		{"no question", ok[:12], dnsmessage.RCodeFormatError, false},
		{"cut question", ok[:len(ok)-2], dnsmessage.RCodeFormatError, false},
		{"two questions", twoQuestions, dnsmessage.RCodeFormatError, false},
		{"two OPT records", twoOPT, dnsmessage.RCodeFormatError, false},
		{"opcode STATUS", withHeader(func(h *dnsmessage.Header) { h.OpCode = 2 }), dnsmessage.RCodeNotImplemented, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := s.Answer(tt.msg, udpLimit)
			if tt.none {
				if b != nil {
					t.Fatalf("answered %x, want no answer", b)
				}
				return
			}
			r := parse(t, b)
			if r.msg.Header.RCode != tt.rcode || len(r.msg.Answers) != 0 {
				t.Fatalf("rcode %v with %d answers, want %v and none", r.msg.Header.RCode, len(r.msg.Answers), tt.rcode)
			}
		})
	}
}

// TestAnswerServfail: a zone that cannot answer yet gives SERVFAIL, not
// NXDOMAIN that resolvers would cache.
func TestAnswerServfail(t *testing.T) {
	for _, z := range []*mapZone{
		{domain: ""},
		{domain: "clustral.internal", err: errors.New("no map yet")},
	} {
		s := &Server{Zone: z}
		r := parse(t, s.Answer(query(t, "prod.clustral.internal.", dnsmessage.TypeA, 0), udpLimit))
		if r.msg.Header.RCode != dnsmessage.RCodeServerFailure {
			t.Errorf("zone %+v: rcode %v, want SERVFAIL", z, r.msg.Header.RCode)
		}
	}
}

// TestAnswerTruncates: an answer longer than the client takes over UDP
// is sent with TC and no records; EDNS0 raises the limit, TCP lifts it.
func TestAnswerTruncates(t *testing.T) {
	z := testZone()
	var many []netip.Addr
	for i := range 60 {
		many = append(many, netip.AddrFrom4([4]byte{100, 64, 1, byte(i)}))
	}
	z.set("big.clustral.internal", many...)
	s := &Server{Zone: z}
	for _, tt := range []struct {
		name    string
		edns    int
		limit   int
		trunc   bool
		answers int
	}{
		{"UDP without EDNS0", 0, udpLimit, true, 0},
		{"UDP with EDNS0 1232", 1232, udpLimit, false, 60},
		{"UDP with EDNS0 4096 is held to 1232", 4096, udpLimit, false, 60},
		{"TCP", 0, maxTCPSize, false, 60},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := s.Answer(query(t, "big.clustral.internal.", dnsmessage.TypeA, tt.edns), tt.limit)
			r := parse(t, b)
			if r.msg.Header.Truncated != tt.trunc || len(r.addrs) != tt.answers {
				t.Fatalf("TC %v with %d answers (%d bytes), want TC %v with %d", r.msg.Header.Truncated, len(r.addrs), len(b), tt.trunc, tt.answers)
			}
		})
	}
}

// TestServe resolves through Go's own stub resolver over UDP and TCP,
// and follows the zone live: a removed name is NXDOMAIN at once.
func TestServe(t *testing.T) {
	z := testZone()
	_, addr := serve(t, z, nil)
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			r := resolverAt(network, addr)
			got, err := r.LookupHost(context.Background(), "prod.clustral.internal")
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(got)
			if want := []string{"100.64.0.2", "100.64.0.3", "fd7a::2"}; !slices.Equal(got, want) {
				t.Fatalf("LookupHost = %v, want %v", got, want)
			}
			var de *net.DNSError
			if _, err := r.LookupHost(context.Background(), "example.com"); !errors.As(err, &de) || de.IsNotFound {
				t.Fatalf("LookupHost outside the zone = %v, want a DNS error that is not NXDOMAIN (REFUSED)", err)
			}
		})
	}
	z.set("prod.clustral.internal")
	var de *net.DNSError
	if _, err := resolverAt("udp", addr).LookupHost(context.Background(), "prod.clustral.internal"); !errors.As(err, &de) || !de.IsNotFound {
		t.Fatalf("LookupHost of a removed name = %v, want not found", err)
	}
}

// TestServeAllow: a query from a source Allow refuses gets no answer at
// all, over UDP or TCP.
func TestServeAllow(t *testing.T) {
	refused := netip.MustParseAddr("127.0.0.2")
	_, addr := serve(t, testZone(), func(src netip.Addr) bool { return src != refused })
	dial := func(network, from string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(from)}}
		if network == "tcp" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
		}
		c, err := d.Dial(network, addr)
		must(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	q := query(t, "prod.clustral.internal.", dnsmessage.TypeA, 0)

	// The server reads UDP queries in order: once the allowed client has
	// its answer, the refused one's query was handled before it.
	bad, good := dial("udp", refused.String()), dial("udp", "127.0.0.1")
	_, err := bad.Write(q)
	must(t, err)
	_, err = good.Write(q)
	must(t, err)
	if _, err := good.Read(make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
	if n := pending(t, bad.(*net.UDPConn)); n > 0 {
		t.Fatalf("%d bytes arrived over UDP for a refused source", n)
	}

	// The refused TCP connection is closed without a byte.
	tcp := dial("tcp", refused.String())
	tcp.Write(binary.BigEndian.AppendUint16(nil, uint16(len(q))))
	tcp.Write(q)
	if n, err := tcp.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes over TCP from a refused source", n)
	}
}

// pending reads what c has received without waiting: 0 when nothing.
func pending(t *testing.T, c *net.UDPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	must(t, err)
	var n int
	var rerr error
	must(t, rc.Read(func(fd uintptr) bool {
		n, _, rerr = syscall.Recvfrom(int(fd), make([]byte, 512), syscall.MSG_DONTWAIT)
		return true
	}))
	if errors.Is(rerr, syscall.EAGAIN) {
		return 0
	}
	must(t, rerr)
	return n
}

// serve runs a server for z on a loopback UDP socket and a TCP listener
// on the same port until the test ends, and checks that it then stops.
func serve(t *testing.T, z Zone, allow func(netip.Addr) bool) (*Server, string) {
	t.Helper()
	var pc net.PacketConn
	var l net.Listener
	for range 10 {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if l, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no port free for both UDP and TCP")
	}
	s := &Server{Zone: z, Allow: allow}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, pc, l) }()
	t.Cleanup(func() {
		cancel()
		if err := testkit.Recv(t, done, "Serve to return"); err != nil {
			t.Errorf("Serve = %v after its context ended, want nil", err)
		}
	})
	return s, pc.LocalAddr().String()
}

// resolverAt is Go's stub resolver asking only addr, over network.
func resolverAt(network, addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}
