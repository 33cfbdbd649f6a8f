package socks5

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"
)

// scriptConn is a client connection that sends a fixed script and then
// EOF, and records what the server answers.
type scriptConn struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (c *scriptConn) Read(b []byte) (int, error)       { return c.in.Read(b) }
func (c *scriptConn) Write(b []byte) (int, error)      { return c.out.Write(b) }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }
func scriptedHandshake(user, pass string, req ...byte) []byte {
	b := []byte{socksVersion, 1, methodUserPass, userPassVersion, byte(len(user))}
	b = append(b, user...)
	b = append(b, byte(len(pass)))
	b = append(b, pass...)
	return append(b, req...)
}

// FuzzHandshake drives the whole server side of a connection — method
// selection, RFC 1929 authentication and the request — with arbitrary
// client bytes. It never panics, and the server dials only for a client
// that offered username/password and presented exactly the credential.
func FuzzHandshake(f *testing.F) {
	connect := []byte{socksVersion, cmdConnect, 0, atypIPv4, 100, 64, 0, 2, 1, 187}
	f.Add(scriptedHandshake(testUser, testPass, connect...))
	f.Add(scriptedHandshake(testUser, testPass, cat([]byte{5, 1, 0, 3, 22}, []byte("prod.clustral.internal"), []byte{1, 187})...))
	f.Add(scriptedHandshake(testUser, "wrong", connect...))
	f.Add(scriptedHandshake("", "", connect...))
	f.Add([]byte{5, 1, 0, 5, 1, 0, 1, 100, 64, 0, 2, 1, 187}) // no authentication offered
	f.Add([]byte{5, 2, 0, 2})
	f.Add([]byte{4, 1, 0, 80, 1, 2, 3, 4, 0})
	f.Add([]byte{5, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var dials int
		s := &Server{Username: testUser, Password: testPass, Logger: slog.New(slog.DiscardHandler),
			Dial: func(context.Context, string, string, uint16) (net.Conn, error) {
				dials++
				return nil, ErrConnectionRefused
			}}
		s.init()
		c := &scriptConn{in: bytes.NewReader(data)}
		s.serveConn(c)
		if dials == 0 {
			return
		}
		// It dialed: the script must start with a greeting offering
		// username/password and the exact credential.
		if len(data) < 2 || data[0] != socksVersion || len(data) < 2+int(data[1]) || !slices.Contains(data[2:2+int(data[1])], methodUserPass) {
			t.Fatalf("dialed for %x without a greeting offering username/password", data)
		}
		auth := data[2+int(data[1]):]
		if want := scriptedHandshake(testUser, testPass)[3:]; !bytes.HasPrefix(auth, want) {
			t.Fatalf("dialed for %x without the credential", data)
		}
		if dials != 1 {
			t.Fatalf("%d dials for one connection", dials)
		}
	})
}
