package auditexport

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/leodido/go-syslog/v4/rfc5424"

	"github.com/clustral/clustral/proto"
)

// Syslog severities (RFC 5424, 6.2.1) of the audit codes' levels.
const (
	sevError   = 3
	sevWarning = 4
	sevInfo    = 6
)

func syslogSeverity(c proto.AuditCode) uint8 {
	switch c.Severity() {
	case "E":
		return sevError
	case "W":
		return sevWarning
	}
	return sevInfo
}

// syslogMessage formats e as one RFC 5424 message (the library
// github.com/leodido/go-syslog builds and escapes it): PRI from the
// destination's facility and the code's level, the event's time, the
// destination's HOSTNAME and APP-NAME, the coordinator's PROCID, the
// code as MSGID, the event's fields as structured data (code, seq,
// hash, category, outcome, actor, cluster, object when set) and the JSON
// event as MSG.
func syslogMessage(d *Destination, e *proto.AuditEvent) ([]byte, error) {
	body, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encode audit event %d: %w", e.Seq, err)
	}
	m := &rfc5424.SyslogMessage{}
	m.SetPriority(uint8(d.Facility*8) + syslogSeverity(e.Code))
	m.SetVersion(1)
	m.SetTimestamp(e.Time.UTC().Format("2006-01-02T15:04:05.999999Z07:00"))
	m.SetHostname(d.Hostname)
	m.SetAppname(d.AppName)
	m.SetProcID(strconv.Itoa(os.Getpid()))
	if e.Code != "" {
		m.SetMsgID(string(e.Code))
	}
	for _, p := range []struct{ k, v string }{
		{"code", string(e.Code)}, {"seq", strconv.FormatUint(e.Seq, 10)}, {"hash", e.Hash},
		{"category", string(e.Category)}, {"outcome", string(e.Outcome)},
		{"actor", e.Actor}, {"cluster", e.Cluster}, {"object", e.Object},
	} {
		if p.v == "" {
			continue
		}
		// The builder takes a PARAM-VALUE as it is written, escaped, and
		// drops one it cannot read; check that it kept this one.
		m.SetParameter(d.SDID, p.k, sdEscaper.Replace(p.v))
		if got := (*m.StructuredData)[d.SDID][p.k]; got != p.v {
			return nil, fmt.Errorf("format audit event %d as syslog: structured data %s=%q was not taken", e.Seq, p.k, p.v)
		}
	}
	m.SetMessage(string(body))
	s, err := m.String()
	if err != nil {
		return nil, fmt.Errorf("format audit event %d as syslog: %w", e.Seq, err)
	}
	return []byte(s), nil
}

// sdEscaper escapes a PARAM-VALUE (RFC 5424, 6.3.3).
var sdEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, `]`, `\]`)

// syslogFrame is msg with RFC 5425 octet-counting framing: its length
// in decimal, a space, the message.
func syslogFrame(dst, msg []byte) []byte {
	dst = strconv.AppendInt(dst, int64(len(msg)), 10)
	dst = append(dst, ' ')
	return append(dst, msg...)
}

// syslogSender writes batches to one syslog receiver over TLS, on one
// connection it keeps while it works. It is used by one goroutine.
//
// Syslog over TLS has no acknowledgement. A batch counts as taken when it
// was written and the connection then stayed up for the destination's
// AckWait: a receiver that stopped or closed the connection before or
// while the batch arrived shows as an end of stream or a reset within
// that wait, and the batch is sent again on a new connection. What a
// receiver read and then lost without closing the connection cannot be
// told apart from what it kept; use OTLP, whose receiver answers each
// request, where that matters.
type syslogSender struct {
	d    *Destination
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	conn *tls.Conn
	buf  []byte
}

func newSyslogSender(d *Destination) *syslogSender {
	return &syslogSender{d: d, dial: (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext}
}

func (s *syslogSender) connect(ctx context.Context) error {
	raw, err := s.dial(ctx, "tcp", s.d.Addr)
	if err != nil {
		return err
	}
	c := tls.Client(raw, s.d.TLS)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return fmt.Errorf("TLS handshake with %s: %w", s.d.Addr, err)
	}
	s.conn = c
	return nil
}

// Send writes evs, in order, and returns nil once the receiver has taken
// them (see syslogSender).
func (s *syslogSender) Send(ctx context.Context, evs []proto.AuditEvent) error {
	s.buf = s.buf[:0]
	for i := range evs {
		msg, err := syslogMessage(s.d, &evs[i])
		if err != nil {
			return err
		}
		s.buf = syslogFrame(s.buf, msg)
	}
	if s.conn != nil && s.closedByPeer(0) {
		s.Close()
	}
	if s.conn == nil {
		if err := s.connect(ctx); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(s.d.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	s.conn.SetWriteDeadline(deadline)
	// A cancelled ctx (the coordinator closing) ends a write or the
	// wait after it at once.
	conn := s.conn
	defer context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })()
	if _, err := s.conn.Write(s.buf); err != nil {
		s.Close()
		return fmt.Errorf("write to %s: %w", s.d.Addr, err)
	}
	closed := s.closedByPeer(s.d.AckWait)
	if err := ctx.Err(); err != nil {
		s.Close() // the wait was cut short: not taken
		return err
	}
	if closed {
		s.Close()
		return fmt.Errorf("%s closed the connection: the batch is sent again", s.d.Addr)
	}
	return nil
}

// closedByPeer reads from the connection for up to wait (at least a
// moment) and reports whether the receiver closed it or anything else
// went wrong. A syslog receiver never sends, so a read that times out
// means the connection is up.
func (s *syslogSender) closedByPeer(wait time.Duration) bool {
	s.conn.SetReadDeadline(time.Now().Add(max(wait, time.Millisecond)))
	var b [1]byte
	_, err := s.conn.Read(b[:])
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// Close closes the connection, if one is open; the next Send opens one.
func (s *syslogSender) Close() error {
	if s.conn == nil {
		return nil
	}
	err := s.conn.Close()
	s.conn = nil
	return err
}
