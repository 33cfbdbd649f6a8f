package testkit

import (
	"net"
	"sync"
	"testing"
)

// ServeTCP serves a loopback TCP port (see Serve) until tb ends, and
// returns its address.
func ServeTCP(tb testing.TB, handle func(net.Conn)) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	Serve(tb, l, handle)
	return l.Addr().String()
}

// Serve accepts connections on l until tb ends and runs handle on each,
// on a goroutine of its own, closing the connection when handle returns.
// When tb ends it closes l and every connection still open (one whose
// peer vanished would otherwise block its handler forever), and waits for
// the handlers to return.
func Serve(tb testing.TB, l net.Listener, handle func(net.Conn)) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	tb.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
}
