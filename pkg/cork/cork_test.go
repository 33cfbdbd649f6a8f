package cork

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/clustral/clustral/pkg/testkit"
)

// recConn records the writes that reach it.
type recConn struct {
	net.Conn
	writes [][]byte
	err    error
}

func (c *recConn) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

func TestConnWrites(t *testing.T) {
	big := strings.Repeat("x", maxHeld)
	tests := []struct {
		name  string
		steps []string // "cork", "uncork", or bytes to write
		want  []string // the writes that reached the connection
	}{
		{"uncorked passes through", []string{"a", "b"}, []string{"a", "b"}},
		{"corked writes go out together", []string{"cork", "a", "b", "c", "uncork"}, []string{"abc"}},
		{"nothing held, nothing written", []string{"cork", "uncork"}, nil},
		{"writes after uncork pass through", []string{"cork", "a", "uncork", "b"}, []string{"a", "b"}},
		{"corked until uncork", []string{"cork", "a", "b"}, nil},
		{"over the bound, the held bytes go first", []string{"cork", "a", big, "b", "uncork"}, []string{"a", big, "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recConn{}
			c := New(rec)
			for _, s := range tt.steps {
				switch s {
				case "cork":
					c.Cork()
				case "uncork":
					if err := c.Uncork(); err != nil {
						t.Fatalf("Uncork: %v", err)
					}
				default:
					if n, err := c.Write([]byte(s)); n != len(s) || err != nil {
						t.Fatalf("Write(%d bytes) = %d, %v", len(s), n, err)
					}
				}
			}
			var got []string
			for _, w := range rec.writes {
				got = append(got, string(w))
			}
			if len(got) != len(tt.want) {
				t.Fatalf("%d writes reached the connection, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("write %d: %d bytes %.8q, want %d bytes %.8q", i, len(got[i]), got[i], len(tt.want[i]), tt.want[i])
				}
			}
		})
	}
}

// TestUncorkReportsWriteError: a held write that fails is reported by
// Uncork, the one call whose caller learns the bytes did not go.
func TestUncorkReportsWriteError(t *testing.T) {
	boom := errors.New("boom")
	rec := &recConn{err: boom}
	c := New(rec)
	c.Cork()
	if _, err := c.Write([]byte("a")); err != nil {
		t.Fatalf("held Write: %v", err)
	}
	if err := c.Uncork(); !errors.Is(err, boom) {
		t.Fatalf("Uncork = %v, want %v", err, boom)
	}
}

// TestTLSRecordsInOneWrite: a TLS write larger than a record, corked,
// reaches the connection as one write, and the peer reads it whole.
func TestTLSRecordsInOneWrite(t *testing.T) {
	cert := testkit.TLSCert(t, "cork.test")
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	count := &countConn{Conn: a}
	cc := New(count)
	srv := tls.Server(cc, &tls.Config{Certificates: []tls.Certificate{cert}})
	cli := tls.Client(b, &tls.Config{InsecureSkipVerify: true})
	if Of(srv) != cc {
		t.Fatal("Of does not find the Conn under TLS")
	}
	if Of(a) != nil {
		t.Fatal("Of finds a Conn where there is none")
	}
	msg := bytes.Repeat([]byte("0123456789abcdef"), 4<<10) // 64 KiB: four records
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, len(msg))
		n := 0
		for n < len(buf) {
			m, err := cli.Read(buf[n:])
			if err != nil {
				break
			}
			n += m
		}
		got <- buf[:n]
	}()
	if err := srv.Handshake(); err != nil {
		t.Fatal(err)
	}
	before := count.n
	cc.Cork()
	if _, err := srv.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := cc.Uncork(); err != nil {
		t.Fatal(err)
	}
	if w := count.n - before; w != 1 {
		t.Errorf("a corked 64 KiB TLS write took %d writes, want 1", w)
	}
	if b := <-got; !bytes.Equal(b, msg) {
		t.Errorf("the peer read %d bytes, not the %d written", len(b), len(msg))
	}
}

type countConn struct {
	net.Conn
	n int
}

func (c *countConn) Write(p []byte) (int, error) {
	c.n++
	return c.Conn.Write(p)
}

// TestFlushNil: Flush on a nil Conn, for a connection without one
// beneath, only flushes.
func TestFlushNil(t *testing.T) {
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	bw.WriteString("frame")
	var c *Conn
	if err := c.Flush(bw); err != nil || out.String() != "frame" {
		t.Fatalf("Flush on nil = %v, wrote %q", err, out.String())
	}
}
