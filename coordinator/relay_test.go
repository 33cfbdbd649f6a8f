package coordinator

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/clustral/clustral/pkg/cork"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// relayPeer is a raw relay connection for tests.
type relayPeer struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
	buf  []byte
}

// dialRelay opens a relay connection with token and returns it, or the
// status of a refused upgrade.
func (e *testEnv) dialRelay(token string, upgrade bool) (*relayPeer, int) {
	e.t.Helper()
	c, err := net.Dial("tcp", e.ts.Listener.Addr().String())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	req, _ := http.NewRequest("GET", e.ts.URL+proto.RelayPath, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if upgrade {
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", proto.RelayUpgrade)
	}
	if err := req.Write(c); err != nil {
		e.t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		e.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		return nil, resp.StatusCode
	}
	return &relayPeer{t: e.t, conn: c, br: br, buf: make([]byte, proto.RelayFrameHeaderLen+proto.MaxRelayPayload)}, resp.StatusCode
}

func (p *relayPeer) send(dst proto.Key, pkt []byte) {
	p.t.Helper()
	if _, err := p.conn.Write(proto.AppendRelayPacket(nil, dst, pkt)); err != nil {
		p.t.Fatal(err)
	}
}

// recv returns the next packet, or ok false when none comes within d.
func (p *relayPeer) recv(d time.Duration) (src proto.Key, pkt []byte, ok bool) {
	p.t.Helper()
	p.conn.SetReadDeadline(time.Now().Add(d))
	for {
		typ, payload, err := proto.ReadRelayFrame(p.br, p.buf)
		if err != nil {
			return src, nil, false
		}
		if typ != proto.RelayFramePacket {
			continue
		}
		src, pkt, err := proto.ParseRelayPacket(payload)
		if err != nil {
			p.t.Fatal(err)
		}
		return src, bytes.Clone(pkt), true
	}
}

// relayMesh is an agent of cluster prod, a device of alice (viewer on
// prod) and a device of bob (no role).
type relayMesh struct {
	agent, alice, bob          proto.RegisterResponse
	agentKey, aliceKey, bobKey proto.Key
}

func newRelayMesh(e *testEnv) relayMesh {
	e.t.Helper()
	admin := e.login("admin@example.com")
	alice := e.login("alice@example.com")
	bob := e.login("bob@example.com")
	cl := e.createCluster(admin.Token, "prod")
	e.must("POST", "/api/v1/roles", admin.Token, proto.Role{Name: "viewer", Groups: []string{"viewers"}}, nil)
	e.must("POST", "/api/v1/assignments", admin.Token, proto.Assignment{User: "alice@example.com", Role: "viewer", Cluster: "prod"}, nil)
	m := relayMesh{agentKey: newKey(e.t), aliceKey: newKey(e.t), bobKey: newKey(e.t)}
	e.must("POST", "/api/v1/agents", cl.JoinToken, proto.RegisterAgentRequest{PublicKey: m.agentKey, Hostname: "a", CSR: newCSR(e.t)}, &m.agent)
	e.must("POST", "/api/v1/devices", alice.Token, proto.RegisterDeviceRequest{PublicKey: m.aliceKey}, &m.alice)
	e.must("POST", "/api/v1/devices", bob.Token, proto.RegisterDeviceRequest{PublicKey: m.bobKey}, &m.bob)
	return m
}

func TestRelayUpgradeRefusals(t *testing.T) {
	e := newTestEnv(t)
	m := newRelayMesh(e)
	tests := []struct {
		name    string
		token   string
		upgrade bool
		want    int
	}{
		{"no token", "", true, http.StatusUnauthorized},
		{"forged token", "cnt_forged", true, http.StatusUnauthorized},
		{"no upgrade", m.agent.NodeToken, false, http.StatusUpgradeRequired},
		{"good", m.agent.NodeToken, true, http.StatusSwitchingProtocols},
	}
	for _, tt := range tests {
		if _, got := e.dialRelay(tt.token, tt.upgrade); got != tt.want {
			t.Errorf("%s: status %d, want %d", tt.name, got, tt.want)
		}
	}
}

// TestRelayAttachedBeforeUpgradeAnswered: once a node has read the
// relay's 101, packets to it are forwarded; the relay does not answer
// before the connection is in its table.
func TestRelayAttachedBeforeUpgradeAnswered(t *testing.T) {
	e := newTestEnv(t)
	m := newRelayMesh(e)
	rl := e.srv.relay
	attached := func() *relayConn {
		rl.mu.RLock()
		defer rl.mu.RUnlock()
		return rl.conns[m.agentKey]
	}
	for i := range 200 {
		prev := attached()
		p, _ := e.dialRelay(m.agent.NodeToken, true)
		if c := attached(); c == nil || c == prev {
			t.Fatalf("dial %d: the relay answered 101 before the agent's connection was attached", i)
		}
		p.conn.Close()
	}
}

func TestRelayForwardsBetweenPeersOnly(t *testing.T) {
	e := newTestEnv(t)
	m := newRelayMesh(e)
	agent, _ := e.dialRelay(m.agent.NodeToken, true)
	alice, _ := e.dialRelay(m.alice.NodeToken, true)
	bob, _ := e.dialRelay(m.bob.NodeToken, true)

	// alice → agent arrives stamped with alice's key, and back.
	alice.send(m.agentKey, []byte("hello agent"))
	src, pkt, ok := agent.recv(5 * time.Second)
	if !ok || src != m.aliceKey || string(pkt) != "hello agent" {
		t.Fatalf("agent got %v %q %v, want alice's packet", src.ShortString(), pkt, ok)
	}
	agent.send(m.aliceKey, []byte("hello alice"))
	if src, pkt, ok := alice.recv(5 * time.Second); !ok || src != m.agentKey || string(pkt) != "hello alice" {
		t.Fatalf("alice got %v %q %v, want the agent's packet", src.ShortString(), pkt, ok)
	}

	// bob may not reach prod: his packets go nowhere, and the agent cannot
	// reach him either. A device may not reach another device.
	bob.send(m.agentKey, []byte("let me in"))
	agent.send(m.bobKey, []byte("psst"))
	alice.send(m.bobKey, []byte("device to device"))
	alice.send(m.agentKey, []byte("marker"))
	if _, pkt, ok := agent.recv(5 * time.Second); !ok || string(pkt) != "marker" {
		t.Fatalf("agent got %q %v, want only alice's marker", pkt, ok)
	}
	if _, pkt, ok := bob.recv(200 * time.Millisecond); ok {
		t.Fatalf("bob got %q from a node he is not a peer of", pkt)
	}
	status := e.srv.RelayStats()
	if status.Conns != 3 || status.Packets != 3 || status.DroppedNoPeer != 3 || status.Bytes != uint64(len("hello agent")+len("hello alice")+len("marker")) {
		t.Errorf("stats = %+v", status)
	}

	// A second connection of a node replaces the first.
	agent2, _ := e.dialRelay(m.agent.NodeToken, true)
	agent.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, agent.br); err != nil {
		t.Fatalf("first agent connection not closed: %v", err)
	}
	alice.send(m.agentKey, []byte("to the new one"))
	if _, pkt, ok := agent2.recv(5 * time.Second); !ok || string(pkt) != "to the new one" {
		t.Fatalf("new agent connection got %q %v", pkt, ok)
	}
}

func TestRelayRateLimit(t *testing.T) {
	e := newTestEnv(t)
	m := newRelayMesh(e)
	// A 64 KiB burst and next to no refill, so what passes does not
	// depend on how long the sends take.
	e.srv.relay.mu.Lock()
	e.srv.relay.rate, e.srv.relay.burst = rate.Limit(1e-3), 64<<10
	e.srv.relay.mu.Unlock()
	agent, _ := e.dialRelay(m.agent.NodeToken, true)
	alice, _ := e.dialRelay(m.alice.NodeToken, true)
	pkt := make([]byte, 1000)
	const sent, burst = 200, (64 << 10) / 1000
	for range sent {
		alice.send(m.agentKey, pkt)
	}
	alice.send(m.agentKey, []byte("end")) // fits in what the burst leaves
	got := 0
	for {
		_, p, ok := agent.recv(10 * time.Second)
		if !ok {
			t.Fatalf("the relay forwarded %d packets and then nothing, not the end marker", got)
		}
		if string(p) == "end" {
			break
		}
		got++
	}
	status := e.srv.RelayStats()
	if got+int(status.DroppedQueue) != burst || status.DroppedRate != sent-burst {
		t.Errorf("forwarded %d of %d packets over a 64 KiB burst; stats = %+v; want %d forwarded or queue-dropped and %d dropped for rate",
			got, sent, status, burst, sent-burst)
	}
}

// TestRelayRateShapesBursts checks that a node a little over its rate is
// slowed down, not dropped: datagrams that the rate allows within
// relayMaxDelay are all forwarded.
func TestRelayRateShapesBursts(t *testing.T) {
	e := newTestEnv(t)
	m := newRelayMesh(e)
	// A 64 KiB burst at 10 MB/s: 40 KB over the burst wait 4 ms.
	e.srv.relay.mu.Lock()
	e.srv.relay.rate, e.srv.relay.burst = rate.Limit(10e6), 64<<10
	e.srv.relay.mu.Unlock()
	agent, _ := e.dialRelay(m.agent.NodeToken, true)
	alice, _ := e.dialRelay(m.alice.NodeToken, true)
	pkt := make([]byte, 1000)
	const sent = (64<<10)/1000 + 40
	for range sent {
		alice.send(m.agentKey, pkt)
	}
	for got := range sent {
		if _, _, ok := agent.recv(10 * time.Second); !ok {
			t.Fatalf("the relay forwarded %d of %d datagrams; stats = %+v", got, sent, e.srv.RelayStats())
		}
	}
	if st := e.srv.RelayStats(); st.DroppedRate != 0 || st.Packets != sent {
		t.Errorf("stats = %+v, want %d forwarded and none dropped for rate", st, sent)
	}
}

func TestRelayQueueBound(t *testing.T) {
	e := newTestEnv(t)
	m := newRelayMesh(e)
	rl := e.srv.relay
	e.srv.mu.Lock()
	agentID, aliceID := e.srv.nodesByKey[m.agentKey].ID, e.srv.nodesByKey[m.aliceKey].ID
	e.srv.mu.Unlock()
	// A destination that never drains: its queue holds 2, the rest drop.
	dst := &relayConn{key: m.agentKey, nodeID: agentID, out: make(chan *[]byte, 2), allowed: map[proto.Key]allowEntry{}}
	src := &relayConn{key: m.aliceKey, nodeID: aliceID, lim: rate.NewLimiter(rate.Inf, 0), allowed: map[proto.Key]allowEntry{}}
	rl.mu.Lock()
	rl.conns[dst.key], rl.conns[src.key] = dst, src
	rl.mu.Unlock()
	t.Cleanup(func() {
		rl.mu.Lock()
		delete(rl.conns, dst.key)
		delete(rl.conns, src.key)
		rl.mu.Unlock()
	})
	for range 5 {
		rl.forward(src, dst.key, []byte("x"))
	}
	if status := e.srv.RelayStats(); status.Packets != 2 || status.DroppedQueue != 3 {
		t.Errorf("stats = %+v, want 2 queued and 3 dropped", status)
	}
	frame := *<-dst.out
	if k, pkt, err := proto.ParseRelayPacket(frame[proto.RelayFrameHeaderLen:]); err != nil || k != m.aliceKey || string(pkt) != "x" {
		t.Errorf("queued frame = %v %q %v", k.ShortString(), pkt, err)
	}
}

func TestEndpointsUpdateReachesPeers(t *testing.T) {
	e := newTestEnv(t)
	m := newRelayMesh(e)
	am := e.openMap(m.agent.NodeToken)
	if snap := am.next(); len(snap.Peers) != 1 || snap.Peers[0].Key != m.aliceKey {
		t.Fatalf("agent snapshot = %+v", snap)
	}
	eps := []netip.AddrPort{netip.MustParseAddrPort("198.51.100.7:41641"), netip.MustParseAddrPort("10.0.0.2:41641")}
	e.must("PUT", "/api/v1/nodes/self/endpoints", m.alice.NodeToken, proto.EndpointsUpdate{Endpoints: eps}, nil)
	d := am.next()
	if len(d.Peers) != 1 || d.Peers[0].Key != m.aliceKey || len(d.Peers[0].Endpoints) != 2 || d.Peers[0].Endpoints[0] != eps[0] {
		t.Fatalf("agent delta = %+v, want alice's new endpoints", d)
	}
	bad := []proto.EndpointsUpdate{
		{Endpoints: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:1")}},
		{Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:0")}},
		{Endpoints: make([]netip.AddrPort, maxEndpoints+1)},
	}
	for _, b := range bad {
		if status, _ := e.call("PUT", "/api/v1/nodes/self/endpoints", m.alice.NodeToken, b, nil); status != http.StatusBadRequest {
			t.Errorf("endpoints %v: status %d, want 400", b.Endpoints, status)
		}
	}
	if status, _ := e.call("PUT", "/api/v1/nodes/self/endpoints", "cnt_forged", proto.EndpointsUpdate{}, nil); status != http.StatusUnauthorized {
		t.Errorf("forged token: status %d, want 401", status)
	}
}

func TestSTUNAnswersWithObservedAddress(t *testing.T) {
	e := newTestEnv(t)
	addr := serve(t, e.srv, "udp")
	testkit.WaitFor(t, "the discovery server to listen", func() bool { return e.srv.stunAddr() != "" })
	if got, want := e.srv.stunAddr(), addr; got != want {
		t.Errorf("stunAddr = %q, want %q", got, want)
	}
	admin := e.login("alice@example.com")
	var reg proto.RegisterResponse
	e.must("POST", "/api/v1/devices", admin.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}, &reg)
	if reg.STUN != addr {
		t.Errorf("registration STUN = %q, want %q", reg.STUN, addr)
	}

	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ping := proto.Probe{Type: proto.ProbePing, TxID: [12]byte{1, 2, 3}}
	b, _ := ping.AppendBinary(nil)
	c.Write([]byte("not a probe"))
	c.Write(b)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	pong, ok := proto.ParseProbe(buf[:n])
	if !ok || pong.Type != proto.ProbePong || pong.TxID != ping.TxID || pong.Observed.String() != c.LocalAddr().String() || n != len(b) {
		t.Fatalf("pong = %+v (%d bytes), want observed %v", pong, n, c.LocalAddr())
	}
}

// TestRelayFollowsGrantAtOnce: the relay's cached "not peers" ends with the
// grant that makes them peers, so the first packet after it (WireGuard's
// handshake, which is otherwise retried only after 5 s) gets through.
func TestRelayFollowsGrantAtOnce(t *testing.T) {
	e := newTestEnv(t)
	m := newRelayMesh(e)
	admin := e.login("admin@example.com")
	agent, _ := e.dialRelay(m.agent.NodeToken, true)
	bob, _ := e.dialRelay(m.bob.NodeToken, true)

	bob.send(m.agentKey, []byte("before")) // refused, and the refusal cached
	testkit.WaitFor(t, "the relay to drop the packet between non-peers", func() bool { return e.srv.RelayStats().DroppedNoPeer == 1 })
	e.must("POST", "/api/v1/assignments", admin.Token, proto.Assignment{User: "bob@example.com", Role: "viewer", Cluster: "prod"}, nil)
	bob.send(m.agentKey, []byte("after"))
	if _, pkt, ok := agent.recv(5 * time.Second); !ok || string(pkt) != "after" {
		t.Fatalf("agent got %q %v, want bob's packet sent right after the grant", pkt, ok)
	}
	if status := e.srv.RelayStats(); status.DroppedNoPeer != 1 {
		t.Errorf("stats = %+v, want only the packet before the grant dropped", status)
	}
}

// relayPair registers a source and a destination relay connection for
// alice and the agent of m, with a destination that never drains, and
// removes them at the end of the test.
func relayPair(e *testEnv, m relayMesh, queue int) (src, dst *relayConn) {
	e.t.Helper()
	rl := e.srv.relay
	e.srv.mu.Lock()
	agentID, aliceID := e.srv.nodesByKey[m.agentKey].ID, e.srv.nodesByKey[m.aliceKey].ID
	e.srv.mu.Unlock()
	dst = &relayConn{key: m.agentKey, nodeID: agentID, out: make(chan *[]byte, queue), allowed: map[proto.Key]allowEntry{}}
	src = &relayConn{key: m.aliceKey, nodeID: aliceID, lim: rate.NewLimiter(rate.Inf, 0), allowed: map[proto.Key]allowEntry{}}
	rl.mu.Lock()
	rl.conns[dst.key], rl.conns[src.key] = dst, src
	rl.mu.Unlock()
	e.t.Cleanup(func() {
		rl.mu.Lock()
		delete(rl.conns, dst.key)
		delete(rl.conns, src.key)
		rl.mu.Unlock()
	})
	return src, dst
}

// TestRelayQueueBoundInBytes: a destination's queue is bounded in bytes
// as well as in datagrams, so full-size datagrams cannot pile up 64 KiB
// each up to the datagram count.
func TestRelayQueueBoundInBytes(t *testing.T) {
	e := newTestEnvWith(t, func(c *Config) { c.RelayQueueBytes = 4000 })
	m := newRelayMesh(e)
	src, dst := relayPair(e, m, 1000)
	pkt := make([]byte, 1000) // a 1037-byte frame: three fit in 4000 bytes
	for range 10 {
		e.srv.relay.forward(src, dst.key, pkt)
	}
	if status := e.srv.RelayStats(); status.Packets != 3 || status.DroppedQueue != 7 {
		t.Fatalf("stats = %+v, want 3 queued and 7 dropped", status)
	}
	if q := dst.queued.Load(); q != 3*1037 {
		t.Fatalf("queued bytes = %d, want %d", q, 3*1037)
	}
}

// TestRelayRefusesOversizedDatagrams: a datagram larger than a WireGuard
// message of the tunnel's MTU is dropped and counted.
func TestRelayRefusesOversizedDatagrams(t *testing.T) {
	e := newTestEnv(t)
	m := newRelayMesh(e)
	src, dst := relayPair(e, m, 16)
	for _, tt := range []struct {
		size int
		ok   bool
	}{
		{proto.MaxRelayDatagram, true},
		{proto.MaxRelayDatagram + 1, false},
		{65535, false},
		{148, true}, // a handshake initiation
	} {
		before := e.srv.RelayStats()
		e.srv.relay.forward(src, dst.key, make([]byte, tt.size))
		after := e.srv.RelayStats()
		if got := after.Packets - before.Packets; got != map[bool]uint64{true: 1, false: 0}[tt.ok] {
			t.Errorf("datagram of %d bytes: forwarded %d, want ok=%v", tt.size, got, tt.ok)
		}
		if !tt.ok && after.DroppedTooLarge != before.DroppedTooLarge+1 {
			t.Errorf("datagram of %d bytes not counted as too large: %+v", tt.size, after)
		}
	}
}

// TestRelayOnlyPassesOnNoEndpoints: with RelayOnly the endpoints a node
// publishes, on its map stream or later, reach no peer.
func TestRelayOnlyPassesOnNoEndpoints(t *testing.T) {
	e := newTestEnvWith(t, func(c *Config) { c.RelayOnly = true })
	m := newRelayMesh(e)
	am := e.openMap(m.agent.NodeToken)
	am.next()
	req, _ := http.NewRequest("GET", e.ts.URL+"/api/v1/map?"+endpointsParam+"=198.51.100.8:41641", nil)
	req.Header.Set("Authorization", "Bearer "+m.alice.NodeToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("map stream with endpoints = %d", resp.StatusCode)
	}
	e.must("PUT", "/api/v1/nodes/self/endpoints", m.alice.NodeToken, proto.EndpointsUpdate{Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.51.100.7:41641")}}, nil)
	// The stream's opening changes alice's online state: one delta, with
	// no endpoints.
	d := am.next()
	if len(d.Peers) != 1 || d.Peers[0].Key != m.aliceKey || len(d.Peers[0].Endpoints) != 0 {
		t.Fatalf("agent delta = %+v, want alice without endpoints", d)
	}
	e.srv.mu.Lock()
	defer e.srv.mu.Unlock()
	if eps := e.srv.endpoints[m.alice.NodeID]; len(eps) != 0 {
		t.Fatalf("the coordinator kept alice's endpoints %v", eps)
	}
}

// writeCounter counts the writes that reach a connection.
type writeCounter struct {
	net.Conn
	n atomic.Int64
}

func (c *writeCounter) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}

// TestRelayWriteCorksTLS: the frames of one flush cross TLS as several
// records, and leave the coordinator in one write, when the connection
// under TLS is a cork.Conn as Serve's listener makes it.
func TestRelayWriteCorksTLS(t *testing.T) {
	cert := testkit.TLSCert(t, "coordinator.test")
	relayEnd, nodeEnd := net.Pipe()
	count := &writeCounter{Conn: relayEnd}
	srv := tls.Server(cork.New(count), &tls.Config{Certificates: []tls.Certificate{cert}})
	cli := tls.Client(nodeEnd, &tls.Config{InsecureSkipVerify: true})
	t.Cleanup(func() { srv.Close(); cli.Close() })
	go cli.Handshake()
	if err := srv.Handshake(); err != nil {
		t.Fatal(err)
	}

	var srcKey, dstKey proto.Key
	srcKey[0], dstKey[0] = 1, 2
	rl := &relay{queue: 64, queueBytes: 1 << 20}
	dst := &relayConn{key: dstKey, conn: srv, out: make(chan *[]byte, rl.queue), done: make(chan struct{})}
	// 20 datagrams queued before the writer starts: one flush of
	// about 29 KiB, two TLS records.
	const frames = 20
	pkt := make([]byte, 1400)
	for range frames {
		if !rl.enqueue(dst, srcKey, pkt) {
			t.Fatal("enqueue refused a datagram")
		}
	}
	before := count.n.Load()
	_, bw := relayBuffers(srv, bufio.NewReader(srv))
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		rl.write(dst, bw)
	}()
	t.Cleanup(func() { dst.close(); <-wrote })

	br := bufio.NewReader(cli)
	buf := make([]byte, proto.RelayFrameHeaderLen+proto.MaxRelayPayload)
	for i := range frames {
		typ, payload, err := proto.ReadRelayFrame(br, buf)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if src, got, err := proto.ParseRelayPacket(payload); typ != proto.RelayFramePacket || err != nil || src != srcKey || len(got) != len(pkt) {
			t.Fatalf("frame %d: type %d from %v, %d bytes, %v", i, typ, src, len(got), err)
		}
	}
	if w := count.n.Load() - before; w != 1 {
		t.Errorf("the relay wrote a flush of %d datagrams in %d writes, want 1", frames, w)
	}
}

// TestAPIListenerCorks: the API server's connections, with TLS and
// without, have a cork.Conn beneath for relay.write to find.
func TestAPIListenerCorks(t *testing.T) {
	cert := testkit.TLSCert(t, "coordinator.test")
	for _, cfg := range []*tls.Config{nil, {Certificates: []tls.Certificate{cert}}} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		l = apiListener(l, cfg)
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conn, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if _, isTLS := conn.(*tls.Conn); isTLS != (cfg != nil) {
			t.Errorf("TLS %v: accepted a %T", cfg != nil, conn)
		}
		if cork.Of(conn) == nil {
			t.Errorf("TLS %v: no cork.Conn under the accepted %T", cfg != nil, conn)
		}
	}
}
