package auditexport

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	syslog "github.com/leodido/go-syslog/v4"
	"github.com/leodido/go-syslog/v4/octetcounting"
	"github.com/leodido/go-syslog/v4/rfc5424"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// newCA returns a throwaway CA for one test.
func newCA(t *testing.T) *testkit.CA {
	t.Helper()
	ca, err := testkit.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// issue returns a certificate ca signed for 127.0.0.1 and localhost, for
// a server or, with client set, a client too, and it and its key as PEM.
func issue(t *testing.T, ca *testkit.CA, client bool) (cert tls.Certificate, certPEM, keyPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue("test", nil, []string{"127.0.0.1", "localhost"}, client)
	if err != nil {
		t.Fatal(err)
	}
	if cert, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return cert, certPEM, keyPEM
}

// testCA returns a CA's PEM and a serving certificate it signed.
func testCA(t *testing.T) ([]byte, tls.Certificate) {
	t.Helper()
	ca := newCA(t)
	cert, _, _ := issue(t, ca, false)
	return ca.CertPEM, cert
}

// syslogReceiver is a TLS listener that parses what it receives with
// go-syslog's octet-counting parser. With refuse set it closes every
// connection at once.
type syslogReceiver struct {
	l      net.Listener
	mu     sync.Mutex
	msgs   []*rfc5424.SyslogMessage
	errs   []error
	conns  []net.Conn
	refuse bool
	wg     sync.WaitGroup
}

func startSyslogReceiver(t *testing.T, cert tls.Certificate, refuse bool) *syslogReceiver {
	t.Helper()
	return startSyslogReceiverWith(t, &tls.Config{Certificates: []tls.Certificate{cert}}, refuse)
}

func startSyslogReceiverWith(t *testing.T, cfg *tls.Config, refuse bool) *syslogReceiver {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &syslogReceiver{l: l, refuse: refuse}
	r.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.conns = append(r.conns, c)
			r.mu.Unlock()
			if refuse {
				c.(*tls.Conn).Handshake()
				c.Close()
				continue
			}
			r.wg.Go(func() {
				octetcounting.NewParser(syslog.WithListener(func(res *syslog.Result) {
					r.mu.Lock()
					defer r.mu.Unlock()
					if res.Error != nil {
						r.errs = append(r.errs, res.Error)
						return
					}
					r.msgs = append(r.msgs, res.Message.(*rfc5424.SyslogMessage))
				}), syslog.WithMaxMessageLength(1<<20)).Parse(c)
			})
		}
	})
	t.Cleanup(r.close)
	return r
}

func (r *syslogReceiver) close() {
	r.l.Close()
	r.mu.Lock()
	for _, c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

func (r *syslogReceiver) received() ([]*rfc5424.SyslogMessage, []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*rfc5424.SyslogMessage(nil), r.msgs...), append([]error(nil), r.errs...)
}

func testEvents() []proto.AuditEvent {
	at := time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.UTC)
	return []proto.AuditEvent{
		{Seq: 1, Code: proto.AuditLoginBrowser, Category: proto.CategoryAuth, Time: at, Actor: "alice@example.com", Outcome: proto.OutcomeSuccess, Hash: "h1"},
		{Seq: 2, Code: proto.AuditProxyDenied, Category: proto.CategoryDenial, Time: at.Add(time.Second), Actor: `eve "]\ <x>`, Cluster: "prod",
			Outcome: proto.OutcomeFailure, Error: proto.CodeForbidden, Hash: "h2", Metadata: map[string]string{"reason": "ünïcode ✓"},
			Resource: &proto.AuditResource{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: "default", Name: "web"}},
		{Seq: 3, Code: proto.AuditEventsLost, Category: proto.CategoryAudit, Time: at.Add(2 * time.Second), Actor: "system", Object: "x", Outcome: proto.OutcomeFailure, Hash: "h3"},
	}
}

func syslogDest(t *testing.T, caPEM []byte, addr string) *Destination {
	t.Helper()
	d, err := Parse("syslog+tls://" + addr + "?hostname=coord-1&ca=" + writeFile(t, "ca.pem", string(caPEM)))
	if err != nil {
		t.Fatal(err)
	}
	d.AckWait = 20 * time.Millisecond
	return &d
}

// TestSyslogFraming sends events to a receiver that parses RFC 5425
// framing and RFC 5424 messages: each arrives whole and in order, with
// its fields as structured data and the JSON event as the message.
func TestSyslogFraming(t *testing.T) {
	caPEM, cert := testCA(t)
	r := startSyslogReceiver(t, cert, false)
	s := newSyslogSender(syslogDest(t, caPEM, r.l.Addr().String()))
	defer s.Close()
	evs := testEvents()
	if err := s.Send(context.Background(), evs[:2]); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), evs[2:]); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "3 messages", func() bool { m, errs := r.received(); return len(m)+len(errs) >= 3 })
	msgs, errs := r.received()
	if len(errs) > 0 {
		t.Fatalf("receiver could not parse: %v", errs)
	}
	wantSev := []uint8{sevInfo, sevWarning, sevError}
	for i, m := range msgs {
		e := evs[i]
		if *m.Facility != 13 || *m.Severity != wantSev[i] || *m.Hostname != "coord-1" || *m.Appname != DefaultAppName || *m.MsgID != string(e.Code) {
			t.Errorf("message %d header: facility %d severity %d host %s app %s msgid %s", i, *m.Facility, *m.Severity, *m.Hostname, *m.Appname, *m.MsgID)
		}
		if !m.Timestamp.Equal(e.Time.Truncate(time.Microsecond)) {
			t.Errorf("message %d time %v, want %v", i, m.Timestamp, e.Time)
		}
		sd := (*m.StructuredData)[DefaultSDID]
		if sd["code"] != string(e.Code) || sd["actor"] != e.Actor || sd["seq"] != []string{"1", "2", "3"}[i] || sd["hash"] != e.Hash || sd["cluster"] != e.Cluster {
			t.Errorf("message %d structured data %v", i, sd)
		}
		var got proto.AuditEvent
		if err := json.Unmarshal([]byte(*m.Message), &got); err != nil || got.Seq != e.Seq || got.Actor != e.Actor || got.Metadata["reason"] != e.Metadata["reason"] {
			t.Errorf("message %d body %q (%v)", i, *m.Message, err)
		}
	}
}

// TestSyslogReceiverGone: a receiver that closes the connection does not
// take the batch; the next Send opens a new connection.
func TestSyslogReceiverGone(t *testing.T) {
	caPEM, cert := testCA(t)
	bad := startSyslogReceiver(t, cert, true)
	d := syslogDest(t, caPEM, bad.l.Addr().String())
	s := newSyslogSender(d)
	defer s.Close()
	if err := s.Send(context.Background(), testEvents()); err == nil {
		t.Fatal("Send to a receiver that closes returned nil")
	}
	bad.close()
	if err := s.Send(context.Background(), testEvents()); err == nil {
		t.Fatal("Send with no receiver returned nil")
	}
	good := startSyslogReceiver(t, cert, false)
	d.Addr = good.l.Addr().String()
	if err := s.Send(context.Background(), testEvents()); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "delivered", func() bool { m, _ := good.received(); return len(m) == 3 })
}

// TestSyslogVerifiesServer: a receiver whose certificate the CA did not
// sign is refused.
func TestSyslogVerifiesServer(t *testing.T) {
	_, cert := testCA(t)
	otherCA, _ := testCA(t)
	r := startSyslogReceiver(t, cert, false)
	s := newSyslogSender(syslogDest(t, otherCA, r.l.Addr().String()))
	defer s.Close()
	err := s.Send(context.Background(), testEvents())
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Send = %v, want a certificate error", err)
	}
}

// TestSyslogClientCertificate: with cert= and key= the sender presents a
// client certificate to a receiver that requires one; without them the
// receiver refuses it.
func TestSyslogClientCertificate(t *testing.T) {
	ca := newCA(t)
	server, _, _ := issue(t, ca, false)
	r := startSyslogReceiverWith(t, &tls.Config{Certificates: []tls.Certificate{server},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool()}, false)
	_, certPEM, keyPEM := issue(t, ca, true)

	without := newSyslogSender(syslogDest(t, ca.CertPEM, r.l.Addr().String()))
	defer without.Close()
	if err := without.Send(context.Background(), testEvents()); err == nil {
		t.Fatal("a receiver requiring a client certificate took a batch without one")
	}
	d, err := Parse("syslog+tls://" + r.l.Addr().String() + "?hostname=coord-1&ca=" + writeFile(t, "ca.pem", string(ca.CertPEM)) +
		"&cert=" + writeFile(t, "client.pem", string(certPEM)) + "&key=" + writeFile(t, "client-key.pem", string(keyPEM)))
	if err != nil {
		t.Fatal(err)
	}
	with := newSyslogSender(&d)
	defer with.Close()
	if err := with.Send(context.Background(), testEvents()); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "delivered with a client certificate", func() bool { m, _ := r.received(); return len(m) == 3 })
}

// FuzzSyslogMessage formats events with arbitrary texts: every message
// must parse back as RFC 5424 with the same structured data and body.
func FuzzSyslogMessage(f *testing.F) {
	f.Add("alice@example.com", "prod", "obj", "reason", "text", uint64(1))
	f.Add(`"]\`, "", "", "", "", uint64(0))
	f.Add("ünïcode ✓", "\x00\x01", "\n\r", "k=v", "\xff\xfe", uint64(1<<63))
	f.Add(strings.Repeat("x", 300), " ", "]", "[", "=", uint64(42))
	d := &Destination{AppName: DefaultAppName, Hostname: "coord-1", SDID: DefaultSDID, Facility: 13}
	f.Fuzz(func(t *testing.T, actor, cluster, object, mdKey, mdVal string, seq uint64) {
		e := proto.AuditEvent{Seq: seq, Code: proto.AuditRequest, Category: proto.CategoryRequest, Time: time.Unix(int64(seq%1e10), 0).UTC(),
			Actor: actor, Cluster: cluster, Object: object, Metadata: map[string]string{mdKey: mdVal}, Hash: "h"}
		// What the store holds went through JSON, which makes strings
		// valid UTF-8.
		raw, _ := json.Marshal(e)
		e = proto.AuditEvent{}
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatal(err)
		}
		msg, err := syslogMessage(d, &e)
		if err != nil {
			t.Fatalf("format: %v", err)
		}
		frame := syslogFrame(nil, msg)
		var got []*syslog.Result
		octetcounting.NewParser(syslog.WithListener(func(r *syslog.Result) { got = append(got, r) }),
			syslog.WithMaxMessageLength(1<<20)).Parse(strings.NewReader(string(frame)))
		if len(got) != 1 || got[0].Error != nil {
			t.Fatalf("parse %q: %+v", frame, got)
		}
		m := got[0].Message.(*rfc5424.SyslogMessage)
		sd := (*m.StructuredData)[DefaultSDID]
		for k, want := range map[string]string{"actor": e.Actor, "cluster": e.Cluster, "object": e.Object} {
			if sd[k] != want {
				t.Fatalf("%s = %q, want %q", k, sd[k], want)
			}
		}
		var back proto.AuditEvent
		if err := json.Unmarshal([]byte(*m.Message), &back); err != nil || back.Actor != e.Actor || back.Metadata[mdKey] != e.Metadata[mdKey] {
			t.Fatalf("body %q: %v", *m.Message, err)
		}
	})
}

// TestSyslogCancelledIsNotTaken: a Send whose context ends while it waits
// to see the connection stay up does not count the batch as taken.
func TestSyslogCancelledIsNotTaken(t *testing.T) {
	caPEM, cert := testCA(t)
	r := startSyslogReceiver(t, cert, false)
	d := syslogDest(t, caPEM, r.l.Addr().String())
	d.AckWait = time.Minute
	s := newSyslogSender(d)
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Send(ctx, testEvents()) }()
	testkit.WaitFor(t, "the batch arrived (Send now waits)", func() bool { m, _ := r.received(); return len(m) == 3 })
	cancel()
	if err := testkit.Recv(t, done, "Send returns after the cancel"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Send = %v, want context.Canceled", err)
	}
}
