package coordinator

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// TestCloseStopsListenAndServe holds that Close owns what ListenAndServe
// starts: the API, the ops server and endpoint discovery stop, their
// sockets are released, and ListenAndServe returns, without its context
// being cancelled.
func TestCloseStopsListenAndServe(t *testing.T) {
	s, err := New(context.Background(), Config{
		Listen: "127.0.0.1:0", MetricsListen: "127.0.0.1:0", STUNListen: "127.0.0.1:0",
		PublicURL: "http://127.0.0.1:1", DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- s.ListenAndServe(context.Background(), func(a net.Addr) { ready <- a }) }()
	api := (<-ready).String()

	resp, err := http.Get("http://" + api + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// Discovery announces its port once it serves.
	deadline := time.Now().Add(10 * time.Second)
	for s.relay.stunPort.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("endpoint discovery did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	stun := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(s.relay.stunPort.Load()))
	c, err := net.Dial("udp", stun.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ping, _ := (&proto.Probe{Type: proto.ProbePing, TxID: [12]byte{7}}).AppendBinary(nil)
	c.Write(ping)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no pong from discovery: %v", err)
	}
	if p, ok := proto.ParseProbe(buf[:n]); !ok || p.Type != proto.ProbePong || p.TxID != [12]byte{7} {
		t.Fatalf("answer %x is not the pong", buf[:n])
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := testkit.RecvWithin(t, 10*time.Second, done, "ListenAndServe to return after Close"); err != nil {
		t.Errorf("ListenAndServe after Close = %v, want nil", err)
	}
	if s.relay.stunPort.Load() != 0 {
		t.Error("discovery still announced after Close")
	}
	// Every socket was released.
	pc, err := net.ListenPacket("udp", stun.String())
	if err != nil {
		t.Errorf("discovery socket still bound after Close: %v", err)
	} else {
		pc.Close()
	}
	l, err := net.Listen("tcp", api)
	if err != nil {
		t.Errorf("API socket still bound after Close: %v", err)
	} else {
		l.Close()
	}
	// Once closed, nothing is served any more.
	if err := s.Serve(context.Background(), mustListen(t)); !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve after Close = %v, want http.ErrServerClosed", err)
	}
}

func mustListen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}
