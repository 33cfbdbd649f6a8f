package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// mapServer serves scripted map streams: connection i runs scripts[i], or
// the last script once they run out.
type mapServer struct {
	*httptest.Server
	mu      sync.Mutex
	scripts []func(w http.ResponseWriter, r *http.Request)
	reqs    []*http.Request
}

func newMapServer(t *testing.T, scripts ...func(w http.ResponseWriter, r *http.Request)) *mapServer {
	t.Helper()
	s := &mapServer{scripts: scripts}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/api/v1/map" {
			http.NotFound(w, r)
			return
		}
		s.mu.Lock()
		i := min(len(s.reqs), len(s.scripts)-1)
		s.reqs = append(s.reqs, r.Clone(context.Background()))
		script := s.scripts[i]
		s.mu.Unlock()
		script(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *mapServer) requests() []*http.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*http.Request(nil), s.reqs...)
}

// send writes each item as one line: a proto.MapMessage as JSON, a string
// verbatim.
func send(w http.ResponseWriter, items ...any) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	for _, it := range items {
		var b []byte
		switch v := it.(type) {
		case string:
			b = []byte(v)
		default:
			b, _ = json.Marshal(v)
		}
		w.Write(append(b, '\n'))
		w.(http.Flusher).Flush()
	}
}

// lines returns a script that sends items and then holds the stream open.
func lines(items ...any) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		send(w, items...)
		<-r.Context().Done()
	}
}

type applied struct {
	msg proto.MapMessage
	err error
}

// recordingApplier reports every Apply on a channel.
type recordingApplier struct {
	a  Applier
	ch chan applied
}

func (r *recordingApplier) Apply(m proto.MapMessage) error {
	err := r.a.Apply(m)
	r.ch <- applied{m, err}
	return err
}

func (r *recordingApplier) next(t *testing.T) applied {
	t.Helper()
	select {
	case a := <-r.ch:
		return a
	case <-time.After(okTimeout):
		t.Fatal("no Apply within the timeout")
		return applied{}
	}
}

func (r *recordingApplier) none(t *testing.T) {
	t.Helper()
	select {
	case a := <-r.ch:
		t.Fatalf("unexpected Apply of version %d (err %v)", a.msg.Version, a.err)
	default:
	}
}

// runStream runs a stream for a against srv until the test ends; the
// returned channel yields Run's result.
func runStream(t *testing.T, a Applier, srv *mapServer, mod func(*StreamConfig)) (*Stream, <-chan error) {
	t.Helper()
	cfg := StreamConfig{
		BaseURL:    srv.URL,
		Client:     srv.Client(),
		Token:      "node-token",
		Logger:     testLogger(t),
		MinBackoff: 5 * time.Millisecond,
		MaxBackoff: 20 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := NewStream(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		done <- s.Run(ctx)
		close(exited)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-exited:
		case <-time.After(okTimeout):
			t.Error("Run did not return after cancel")
		}
	})
	return s, done
}

func TestStreamSnapshotAndDeltas(t *testing.T) {
	n := newBareNode(t)
	p1, p2 := fakePeer(t, 1), fakePeer(t, 2)
	srv := newMapServer(t, lines(
		proto.MapMessage{KeepAlive: true},
		proto.MapMessage{Version: 1, Snapshot: true, Peers: []proto.Peer{p1}},
		proto.MapMessage{KeepAlive: true},
		"",
		proto.MapMessage{Version: 2, Peers: []proto.Peer{p2}},
		proto.MapMessage{Version: 3, Removed: []proto.Key{p1.Key}},
	))
	rec := &recordingApplier{a: n, ch: make(chan applied, 16)}
	eps := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:51820"), netip.MustParseAddrPort("[2001:db8::1]:51820")}
	s, _ := runStream(t, rec, srv, func(c *StreamConfig) {
		c.Endpoints = func() []netip.AddrPort { return eps }
	})

	for _, want := range []uint64{1, 2, 3} {
		a := rec.next(t)
		if a.err != nil || a.msg.Version != want || a.msg.KeepAlive {
			t.Fatalf("applied version %d keepalive %v err %v, want version %d", a.msg.Version, a.msg.KeepAlive, a.err, want)
		}
	}
	if got := n.Peers(); len(got) != 1 || got[0].Key != p2.Key {
		t.Errorf("peers after deltas = %d, want only p2", len(got))
	}
	testkit.WaitFor(t, "status version 3", func() bool { return s.Status().Version == 3 })
	if status := s.Status(); !status.Connected || status.Connects != 1 || status.LastError != nil || status.Since.IsZero() {
		t.Errorf("status = %+v", status)
	}

	req := srv.requests()[0]
	if got := req.Header.Get("Authorization"); got != "Bearer node-token" {
		t.Errorf("Authorization = %q", got)
	}
	if got := req.URL.Query().Get(proto.MapEndpointsParam); got != "192.0.2.1:51820,[2001:db8::1]:51820" {
		t.Errorf("endpoints = %q", got)
	}
}

// TestStreamResyncs checks that every way a connection can go wrong leads
// to a reconnect and a new snapshot, and that nothing after the fault is
// applied.
func TestStreamResyncs(t *testing.T) {
	const maxLine = 4096
	tests := []struct {
		name    string
		fault   []any // sent after snapshot 1, followed by a valid delta 2
		applied []uint64
		wantErr error
		idle    bool
	}{
		{name: "version gap", fault: []any{proto.MapMessage{Version: 3}}, applied: []uint64{3}, wantErr: ErrVersionGap},
		{name: "malformed line", fault: []any{`{"version": 2, "peers": [`}, wantErr: ErrInvalidMessage},
		{name: "wrong field type", fault: []any{`{"version": "two"}`}, wantErr: ErrInvalidMessage},
		{name: "bad key", fault: []any{`{"version": 2, "peers": [{"key": "AAAA"}]}`}, wantErr: ErrInvalidMessage},
		{name: "invalid message", fault: []any{proto.MapMessage{Version: 2, Peers: []proto.Peer{{NodeID: "zero key"}}}}, applied: []uint64{2}, wantErr: ErrInvalidMessage},
		{name: "oversize line", fault: []any{`{"version": 2, "mesh_domain": "` + strings.Repeat("x", maxLine) + `"}`}, wantErr: ErrInvalidMessage},
		{name: "idle", idle: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newBareNode(t)
			p1, p2, p3 := fakePeer(t, 1), fakePeer(t, 2), fakePeer(t, 3)
			type view struct {
				version uint64
				peers   []proto.Peer
			}
			atReconnect := make(chan view, 1)

			first := func(w http.ResponseWriter, r *http.Request) {
				send(w, proto.MapMessage{Version: 1, Snapshot: true, Peers: []proto.Peer{p1}})
				if !tt.idle {
					send(w, tt.fault...)
					send(w, proto.MapMessage{Version: 2, Peers: []proto.Peer{p2}})
				}
				<-r.Context().Done()
			}
			second := func(w http.ResponseWriter, r *http.Request) {
				v, _ := n.Version()
				atReconnect <- view{v, n.Peers()}
				lines(proto.MapMessage{Version: 7, Snapshot: true, Peers: []proto.Peer{p1, p3}})(w, r)
			}
			srv := newMapServer(t, first, second)
			rec := &recordingApplier{a: n, ch: make(chan applied, 16)}
			s, _ := runStream(t, rec, srv, func(c *StreamConfig) {
				c.MaxLineBytes = maxLine
				if tt.idle {
					c.IdleTimeout = 200 * time.Millisecond
				}
			})

			if a := rec.next(t); a.err != nil || a.msg.Version != 1 {
				t.Fatalf("first apply: version %d err %v", a.msg.Version, a.err)
			}
			for _, v := range tt.applied {
				a := rec.next(t)
				if a.msg.Version != v || !errors.Is(a.err, tt.wantErr) {
					t.Fatalf("apply version %d err %v, want version %d err %v", a.msg.Version, a.err, v, tt.wantErr)
				}
			}
			var got view
			select {
			case got = <-atReconnect:
			case <-time.After(okTimeout):
				t.Fatal("no reconnect")
			}
			if got.version != 1 || len(got.peers) != 1 || got.peers[0].Key != p1.Key {
				t.Errorf("state before resync = version %d, %d peers; want version 1 with p1 only", got.version, len(got.peers))
			}
			if a := rec.next(t); a.err != nil || a.msg.Version != 7 || !a.msg.Snapshot {
				t.Fatalf("resync apply: version %d err %v", a.msg.Version, a.err)
			}
			rec.none(t)
			if v, synced := n.Version(); v != 7 || !synced || len(n.Peers()) != 2 {
				t.Errorf("after resync: version %d synced %v peers %d", v, synced, len(n.Peers()))
			}
			testkit.WaitFor(t, "reconnected status", func() bool { status := s.Status(); return status.Connected && status.Version == 7 })
			status := s.Status()
			if status.Connects != 2 || status.LastError == nil || status.LastErrorAt.IsZero() {
				t.Errorf("status = %+v", status)
			}
			if tt.wantErr != nil && !errors.Is(status.LastError, tt.wantErr) {
				t.Errorf("last error = %v, want %v", status.LastError, tt.wantErr)
			}
		})
	}
}

func TestStreamRequiresSnapshotFirst(t *testing.T) {
	n := newBareNode(t)
	p1 := fakePeer(t, 1)
	srv := newMapServer(t,
		lines(proto.MapMessage{Version: 1, Peers: []proto.Peer{p1}}),
		lines(proto.MapMessage{Version: 4, Snapshot: true}),
	)
	rec := &recordingApplier{a: n, ch: make(chan applied, 16)}
	s, _ := runStream(t, rec, srv, nil)
	if a := rec.next(t); a.msg.Version != 4 || a.err != nil {
		t.Fatalf("first apply: version %d err %v, want the snapshot 4", a.msg.Version, a.err)
	}
	testkit.WaitFor(t, "connected", func() bool { return s.Status().Connected })
	if err := s.Status().LastError; !errors.Is(err, ErrNoSnapshot) {
		t.Errorf("last error = %v, want ErrNoSnapshot", err)
	}
}

func TestStreamRetriesServerErrors(t *testing.T) {
	n := newBareNode(t)
	fail := func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "overloaded", http.StatusServiceUnavailable)
	}
	closeEarly := func(w http.ResponseWriter, r *http.Request) {
		send(w, proto.MapMessage{Version: 1, Snapshot: true})
	}
	srv := newMapServer(t, fail, closeEarly, fail, lines(proto.MapMessage{Version: 2, Snapshot: true}))
	rec := &recordingApplier{a: n, ch: make(chan applied, 16)}
	s, _ := runStream(t, rec, srv, nil)
	for _, v := range []uint64{1, 2} {
		if a := rec.next(t); a.msg.Version != v || a.err != nil {
			t.Fatalf("apply: version %d err %v, want %d", a.msg.Version, a.err, v)
		}
	}
	testkit.WaitFor(t, "connected", func() bool { return s.Status().Connected })
	if got := len(srv.requests()); got != 4 {
		t.Errorf("connections = %d, want 4", got)
	}
	var p *proto.Problem
	if err := s.Status().LastError; !errors.As(err, &p) || p.Status != http.StatusServiceUnavailable {
		t.Errorf("last error = %v, want a 503 problem", err)
	}
}

func TestStreamStopsWhenUnauthorized(t *testing.T) {
	n := newBareNode(t)
	srv := newMapServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusUnauthorized)
		json.NewEncoder(w).Encode(proto.Problem{Title: "node token revoked", Status: 401, Code: proto.CodeUnauthenticated})
	})
	_, done := runStream(t, n, srv, nil)
	var err error
	select {
	case err = <-done:
	case <-time.After(okTimeout):
		t.Fatal("Run kept retrying a refused token")
	}
	var p *proto.Problem
	if !errors.As(err, &p) || p.Code != proto.CodeUnauthenticated || p.Status != 401 {
		t.Fatalf("Run = %v, want the 401 problem", err)
	}
}

func TestNewStream(t *testing.T) {
	for _, u := range []string{"", "coord.example", "ftp://coord.example", "://x"} {
		if _, err := NewStream(nil, StreamConfig{BaseURL: u}); err == nil {
			t.Errorf("NewStream(%q) succeeded", u)
		}
	}
	s, err := NewStream(nil, StreamConfig{BaseURL: "https://coord.example/base/"})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.client.BaseURL() + coordclient.MapPath; got != "https://coord.example/base/api/v1/map" {
		t.Errorf("map URL = %q", got)
	}
	c := s.cfg
	if c.MaxLineBytes != MaxMapLineBytes || c.IdleTimeout != DefaultStreamIdleTimeout ||
		c.MinBackoff != DefaultStreamMinBackoff || c.MaxBackoff != DefaultStreamMaxBackoff || c.Client != http.DefaultClient {
		t.Errorf("defaults not applied: %+v", c)
	}
}

// backoff returns the wait before retry number attempt as Run steps it
// (coordclient.Backoff): exponential from lo, capped at hi, with the
// upper half jittered.
func backoff(attempt int, lo, hi time.Duration) time.Duration {
	b := coordclient.Backoff(lo, hi)
	for range attempt {
		if b.Steps < 1 {
			break // capped: every further step is the same
		}
		b.Step()
	}
	return b.Step()
}

func TestBackoff(t *testing.T) {
	lo, hi := 100*time.Millisecond, 2*time.Second
	for attempt := range 12 {
		want := min(lo<<attempt, hi)
		for range 50 {
			d := backoff(attempt, lo, hi)
			if d < want/2 || d > want {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", attempt, d, want/2, want)
			}
		}
	}
}

// TestStreamBackoffDefaultsStayUnderASecond: however many attempts have
// failed (however long the coordinator was down), the next one comes
// within DefaultStreamMaxBackoff, under a second, jittered over its upper
// half.
func TestStreamBackoffDefaultsStayUnderASecond(t *testing.T) {
	if DefaultStreamMaxBackoff >= time.Second {
		t.Fatalf("DefaultStreamMaxBackoff = %v, want under 1s", DefaultStreamMaxBackoff)
	}
	for attempt := range 64 {
		for range 20 {
			d := backoff(attempt, DefaultStreamMinBackoff, DefaultStreamMaxBackoff)
			if d > DefaultStreamMaxBackoff || d < DefaultStreamMinBackoff/2 {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", attempt, d, DefaultStreamMinBackoff/2, DefaultStreamMaxBackoff)
			}
		}
	}
}

// TestStreamResyncsSoonAfterOutage: with the default backoff, a stream
// whose attempts failed long enough for the backoff to reach its cap (the
// coordinator down, its proxy answering 503) is synced again within a
// second of the coordinator coming back.
func TestStreamResyncsSoonAfterOutage(t *testing.T) {
	var mu sync.Mutex
	down := true
	srv := newMapServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		d := down
		mu.Unlock()
		if d {
			http.Error(w, "coordinator down", http.StatusServiceUnavailable)
			return
		}
		lines(proto.MapMessage{Version: 1, Snapshot: true})(w, r)
	})
	s, _ := runStream(t, newBareNode(t), srv, func(c *StreamConfig) { c.MinBackoff, c.MaxBackoff = 0, 0 })
	// Six failed attempts: the backoff has reached its cap.
	testkit.WaitFor(t, "six failed attempts", func() bool { return len(srv.requests()) >= 6 })
	if s.Status().Connects != 0 {
		t.Fatal("connected while the coordinator was down")
	}
	mu.Lock()
	down = false
	back := time.Now()
	mu.Unlock()
	testkit.WaitFor(t, "the stream to resync", func() bool { return s.Status().Connects == 1 })
	took := time.Since(back)
	t.Logf("resynced %v after the coordinator came back (%d attempts)", took, len(srv.requests()))
	if took > time.Second {
		t.Errorf("resynced %v after the coordinator came back, want within 1s", took)
	}
}

// TestStreamSyncedReportsPublished: Synced is called once per connection,
// after its snapshot is applied, with the endpoints that connection
// opened with, even when the list has changed since.
func TestStreamSyncedReportsPublished(t *testing.T) {
	n := newBareNode(t)
	srv := newMapServer(t,
		func(w http.ResponseWriter, r *http.Request) { // then the connection ends
			send(w, proto.MapMessage{Version: 1, Snapshot: true}, proto.MapMessage{Version: 2, Peers: []proto.Peer{fakePeer(t, 1)}})
		},
		lines(proto.MapMessage{Version: 3, Snapshot: true}),
	)
	first := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:51820")}
	later := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.7:40000"), first[0]}
	var calls atomic.Int32
	var applied atomic.Uint64 // the last version applied
	synced := make(chan []netip.AddrPort, 4)
	rec := applierFunc(func(m proto.MapMessage) error {
		applied.Store(m.Version)
		return n.Apply(m)
	})
	runStream(t, rec, srv, func(c *StreamConfig) {
		c.Endpoints = func() []netip.AddrPort {
			if calls.Add(1) == 1 {
				return first
			}
			return later
		}
		c.Synced = func(published []netip.AddrPort) {
			if v := applied.Load(); v != 1 && v != 3 {
				t.Errorf("Synced called after version %d, want right after a snapshot", v)
			}
			synced <- published
		}
	})
	for i, want := range [][]netip.AddrPort{first, later} {
		if got := testkit.Recv(t, synced, "Synced"); !slices.Equal(got, want) {
			t.Errorf("connection %d: Synced(%v), want the list it opened with, %v", i+1, got, want)
		}
	}
	testkit.WaitFor(t, "version 3 applied", func() bool { return applied.Load() == 3 })
	select {
	case p := <-synced:
		t.Errorf("Synced(%v) called a third time", p)
	default:
	}
}

type applierFunc func(proto.MapMessage) error

func (f applierFunc) Apply(m proto.MapMessage) error { return f(m) }

// TestStreamTakesTheSnapshotOfABigCluster: an agent whose cluster 10,000
// devices may reach gets them all in its first message, each with its
// user's identity and roles; with the default bound that line decodes.
func TestStreamTakesTheSnapshotOfABigCluster(t *testing.T) {
	const devices = 10_000
	peers := make([]proto.Peer, devices)
	for i := range peers {
		v4 := netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)})
		p := proto.Peer{Kind: proto.KindDevice, Addresses: []netip.Prefix{netip.PrefixFrom(v4, 32)}}
		p.Key[0], p.Key[1], p.Key[31] = byte(i>>8), byte(i), 1
		p.NodeID = fmt.Sprintf("dev_%032x", i)
		p.Hostname = fmt.Sprintf("laptop-%05d", i)
		p.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("203.0.113.7:41641"), netip.MustParseAddrPort("192.168.1.20:41641")}
		p.Online = true
		login := fmt.Sprintf("user-%05d@example.com", i)
		p.Identity = &proto.Identity{
			UserID: fmt.Sprintf("usr_%024x", i), Login: login, Email: login,
			Groups: []string{"engineering", "platform", "oncall"},
			Roles:  []proto.RoleGrant{{Role: "dev", Groups: []string{"developers", "viewers"}, Source: "assignment"}},
		}
		peers[i] = p
	}
	snap := proto.MapMessage{Version: 1, Snapshot: true, Peers: peers}
	b, err := json.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) <= 4<<20 {
		t.Fatalf("the snapshot is %d bytes; the test needs one over 4 MiB", len(b))
	}
	got := make(chan int, 1)
	srv := newMapServer(t, lines(snap))
	s, _ := runStream(t, applierFunc(func(m proto.MapMessage) error {
		got <- len(m.Peers)
		return nil
	}), srv, nil)
	var n int
	testkit.WaitFor(t, "the snapshot applied or refused", func() bool {
		select {
		case n = <-got:
			return true
		default:
			return s.Status().LastError != nil
		}
	})
	if err := s.Status().LastError; err != nil {
		t.Fatalf("the %d-byte snapshot was refused: %v", len(b), err)
	}
	if n != devices {
		t.Errorf("applied a snapshot of %d peers, want %d", n, devices)
	}
}
