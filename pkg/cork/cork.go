// Package cork holds a connection's writes and sends them together.
//
// The relay's connections carry TLS, and Go's TLS writes each record of at
// most 16 KiB with its own write to the connection beneath. A relay
// connection flushes up to 64 KiB of frames at a time: four records, four
// system calls and, over TCP, up to four trips through the network stack
// where one would do. Corking the connection under TLS for the flush
// sends them in one write.
package cork

import (
	"net"
	"sync"
)

// maxHeld bounds the bytes a corked Conn holds; a write that would pass it
// sends what is held and itself at once.
const maxHeld = 256 << 10

// Conn is a net.Conn whose writes can be held while it is corked (Cork)
// and sent in one write when it is uncorked (Uncork).
//
// A Conn is safe for concurrent use, but corking is meant for one writer:
// whoever corks uncorks, and writes by others meanwhile are held too.
// Uncorked, writes go straight to the wrapped connection. A Conn owns the
// wrapped connection; Close closes it and drops held bytes.
type Conn struct {
	net.Conn

	mu     sync.Mutex
	corked bool
	held   []byte
}

// New returns c as a Conn, uncorked.
func New(c net.Conn) *Conn { return &Conn{Conn: c} }

// Write implements net.Conn. While corked it holds p and reports it
// written; an error writing it comes from Uncork.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(p)
	}
	if len(c.held)+len(p) <= maxHeld {
		c.held = append(c.held, p...)
		return len(p), nil
	}
	err := c.flushLocked()
	if err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// Cork makes writes wait until Uncork.
func (c *Conn) Cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// Uncork sends what the writes since Cork held, in one write, and lets
// later writes through.
func (c *Conn) Uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.flushLocked()
}

// Flush calls w.Flush with c corked, so that what w writes to c, through
// TLS or not, leaves in one write. On a nil Conn it only calls w.Flush.
func (c *Conn) Flush(w interface{ Flush() error }) error {
	if c == nil {
		return w.Flush()
	}
	c.Cork()
	err := w.Flush()
	if uerr := c.Uncork(); err == nil {
		err = uerr
	}
	return err
}

func (c *Conn) flushLocked() error {
	if len(c.held) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.held)
	c.held = c.held[:0]
	return err
}

// Listener wraps a net.Listener so that it accepts Conns.
type Listener struct{ net.Listener }

// Accept implements net.Listener.
func (l Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return New(c), nil
}

// Of returns the Conn under c, unwrapping TLS, or nil when there is none.
func Of(c net.Conn) *Conn {
	type netConner interface{ NetConn() net.Conn }
	if t, ok := c.(netConner); ok {
		c = t.NetConn()
	}
	cc, _ := c.(*Conn)
	return cc
}
