// Package dns is the mesh's DNS server for `clustral up --tun`: it
// answers A and AAAA queries for the names of the mesh domain (a Zone,
// e.g. prod.clustral.internal) so that any program on the machine
// resolves them, over UDP and TCP (RFC 1035, RFC 7766).
//
// The server is authoritative for its zone only and never recurses:
//
//   - a name inside the zone gets its addresses (NOERROR), an empty
//     answer with the zone's SOA when it exists without records of the
//     asked type (NODATA), or NXDOMAIN with the SOA;
//   - a name outside the zone gets REFUSED, so that stub resolvers given
//     this server beside others (a resolv.conf fallback) ask the next one;
//   - SERVFAIL when the zone cannot answer yet (no map received);
//   - FORMERR for a query it cannot read, NOTIMP for an opcode other than
//     QUERY, and no answer at all to a message that is a response or whose
//     header does not parse.
//
// Messages are read and written with golang.org/x/net/dns/dnsmessage.
package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// TTL is the time to live of every record the server gives, in seconds:
// short, so that a cluster whose access ends leaves caches quickly. The
// server itself answers from the live map.
const TTL = 5

// Sizes of messages (RFC 1035 section 4.2.1, RFC 6891).
const (
	minUDPSize = 512  // the size every client accepts
	maxUDPSize = 1232 // the largest UDP answer, whatever EDNS0 offers
	maxTCPSize = 65535
)

// ErrNoSuchName is what Zone.Lookup returns for a name that does not
// exist: the server answers NXDOMAIN.
var ErrNoSuchName = errors.New("no such name")

// Zone is what the server answers for. Its methods are called
// concurrently, once or twice per query.
type Zone interface {
	// Domain is the zone's name, e.g. "clustral.internal": lower case,
	// without a final dot; "" while not known, when every query gets
	// SERVFAIL.
	Domain() string
	// Lookup returns the addresses of name, a lower-case name strictly
	// inside the zone without a final dot. ErrNoSuchName answers
	// NXDOMAIN, any other error SERVFAIL; a name with no address of the
	// asked family is NODATA.
	Lookup(name string) ([]netip.Addr, error)
}

// Server answers DNS queries for a Zone. Set its fields before the first
// Serve and do not change them afterwards. Its methods are safe for
// concurrent use.
type Server struct {
	// Zone answers the queries. Required.
	Zone Zone
	// Allow, if set, says whether a query from src is answered; queries
	// from other sources get no answer at all.
	Allow func(src netip.Addr) bool
	// Logger gets one debug line per query; nothing if nil.
	Logger *slog.Logger
}

// tcpIdle is how long a TCP connection may wait for its next query.
const tcpIdle = 10 * time.Second

// Serve answers the queries that arrive on pc (UDP) and on the
// connections l accepts (TCP: length-prefixed messages, RFC 7766) until
// ctx is done; then it closes pc, l and the open connections, waits for
// every goroutine it started and returns nil. If pc or l fails first, it
// stops the same way and returns the error.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	context.AfterFunc(ctx, func() {
		pc.Close()
		l.Close()
	})
	var wg sync.WaitGroup
	var udpErr, tcpErr error
	wg.Go(func() {
		defer cancel()
		udpErr = s.serveUDP(ctx, pc)
	})
	wg.Go(func() {
		defer cancel()
		tcpErr = s.serveTCP(ctx, l, &wg)
	})
	wg.Wait()
	return errors.Join(udpErr, tcpErr)
}

// serveUDP answers the datagrams on pc until it fails or ctx ends it.
func (s *Server) serveUDP(ctx context.Context, pc net.PacketConn) error {
	buf := make([]byte, maxTCPSize)
	for {
		n, from, err := pc.ReadFrom(buf)
		if temporary(err) {
			continue
		} else if err != nil {
			return ended(ctx, "read", err)
		}
		if !s.allowed(from) {
			continue
		}
		if reply := s.Answer(buf[:n], udpLimit); reply != nil {
			pc.WriteTo(reply, from)
		}
	}
}

// serveTCP serves the connections l accepts, each on a goroutine in wg,
// until l fails or ctx ends it.
func (s *Server) serveTCP(ctx context.Context, l net.Listener, wg *sync.WaitGroup) error {
	for {
		c, err := l.Accept()
		if temporary(err) {
			continue
		} else if err != nil {
			return ended(ctx, "accept", err)
		}
		if !s.allowed(c.RemoteAddr()) {
			c.Close()
			continue
		}
		wg.Go(func() {
			defer context.AfterFunc(ctx, func() { c.Close() })()
			defer c.Close()
			s.serveConn(c)
		})
	}
}

// temporary says whether a read or accept error is worth going on after.
func temporary(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ended is a serve loop's result for err: nil when ctx ended the loop
// (by closing what it reads), else err with what failed.
func ended(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("dns: %s: %w", op, err)
}

// serveConn answers the queries of one TCP connection until the client
// closes it, stays idle for tcpIdle, or sends what is not a message.
func (s *Server) serveConn(c net.Conn) {
	var lenBuf [2]byte
	buf := make([]byte, maxTCPSize)
	for {
		c.SetDeadline(time.Now().Add(tcpIdle))
		if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
			return
		}
		msg := buf[:binary.BigEndian.Uint16(lenBuf[:])]
		if _, err := io.ReadFull(c, msg); err != nil {
			return
		}
		reply := s.Answer(msg, maxTCPSize)
		if reply == nil {
			return
		}
		if _, err := c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(reply)))); err != nil {
			return
		}
		if _, err := c.Write(reply); err != nil {
			return
		}
	}
}

func (s *Server) allowed(from net.Addr) bool {
	if s.Allow == nil {
		return true
	}
	var ap netip.AddrPort
	switch a := from.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		return false
	}
	return s.Allow(ap.Addr().Unmap())
}

// udpLimit marks a UDP answer: its size limit comes from the query
// (512 bytes, or what its EDNS0 record offers up to maxUDPSize).
const udpLimit = -1

// Answer returns the reply to one query message, or nil when the message
// gets none (a response, or a header that does not parse). limit is the
// largest reply the transport carries, or udpLimit; a larger answer is
// sent truncated (TC), without records, so the client asks again over
// TCP.
func (s *Server) Answer(query []byte, limit int) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil || h.Response {
		return nil
	}
	reply := response{id: h.ID, opCode: h.OpCode, rd: h.RecursionDesired}
	if h.OpCode != 0 {
		reply.rcode = dnsmessage.RCodeNotImplemented
		return reply.pack(s.log(), limit)
	}
	q, err := p.Question()
	if err != nil {
		reply.rcode = dnsmessage.RCodeFormatError
		return reply.pack(s.log(), limit)
	}
	reply.question = &q
	if _, err := p.Question(); !errors.Is(err, dnsmessage.ErrSectionDone) {
		reply.rcode = dnsmessage.RCodeFormatError // more than one question
		return reply.pack(s.log(), limit)
	}
	reply.edns, reply.udpSize, err = readEDNS(&p)
	if err != nil {
		reply.rcode = dnsmessage.RCodeFormatError
		return reply.pack(s.log(), limit)
	}
	if limit == udpLimit {
		limit = reply.udpSize
	}
	s.resolve(&reply, q)
	return reply.pack(s.log(), limit)
}

// readEDNS skips to the additional section and reports whether it holds
// an OPT record and the UDP size the client accepts.
func readEDNS(p *dnsmessage.Parser) (edns bool, udpSize int, err error) {
	udpSize = minUDPSize
	if err := p.SkipAllAnswers(); err != nil {
		return false, 0, err
	}
	if err := p.SkipAllAuthorities(); err != nil {
		return false, 0, err
	}
	for {
		rh, err := p.AdditionalHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			return edns, udpSize, nil
		}
		if err != nil {
			return false, 0, err
		}
		if rh.Type == dnsmessage.TypeOPT {
			if edns {
				return false, 0, errors.New("two OPT records") // RFC 6891 section 6.1.1
			}
			edns = true
			udpSize = min(max(int(rh.Class), minUDPSize), maxUDPSize)
		}
		if err := p.SkipAdditional(); err != nil {
			return false, 0, err
		}
	}
}

// resolve fills reply's code, answers and SOA for question q.
func (s *Server) resolve(reply *response, q dnsmessage.Question) {
	domain := s.Zone.Domain()
	if domain == "" {
		reply.rcode = dnsmessage.RCodeServerFailure
		return
	}
	if q.Class != dnsmessage.ClassINET && q.Class != dnsmessage.ClassANY {
		reply.rcode = dnsmessage.RCodeRefused
		return
	}
	name := strings.ToLower(strings.TrimSuffix(q.Name.String(), "."))
	inside, ok := strings.CutSuffix(name, "."+domain)
	if name != domain && (!ok || inside == "") {
		reply.rcode = dnsmessage.RCodeRefused // not ours; no recursion
		return
	}
	reply.aa = true
	soa, err := soaFor(domain)
	if err != nil {
		reply.rcode = dnsmessage.RCodeServerFailure
		return
	}
	if name == domain {
		// The apex exists and holds only its SOA.
		if q.Type == dnsmessage.TypeSOA || q.Type == dnsmessage.TypeALL {
			reply.answers = append(reply.answers, soa)
		} else {
			reply.authority = &soa
		}
		return
	}
	addrs, err := s.Zone.Lookup(name)
	switch {
	case errors.Is(err, ErrNoSuchName):
		reply.rcode = dnsmessage.RCodeNameError
		reply.authority = &soa
		return
	case err != nil:
		reply.rcode = dnsmessage.RCodeServerFailure
		return
	}
	hdr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: TTL}
	for _, a := range addrs {
		switch {
		case a.Is4() && (q.Type == dnsmessage.TypeA || q.Type == dnsmessage.TypeALL):
			h := hdr
			h.Type = dnsmessage.TypeA
			reply.answers = append(reply.answers, dnsmessage.Resource{Header: h, Body: &dnsmessage.AResource{A: a.As4()}})
		case a.Is6() && !a.Is4In6() && (q.Type == dnsmessage.TypeAAAA || q.Type == dnsmessage.TypeALL):
			h := hdr
			h.Type = dnsmessage.TypeAAAA
			reply.answers = append(reply.answers, dnsmessage.Resource{Header: h, Body: &dnsmessage.AAAAResource{AAAA: a.As16()}})
		}
	}
	if len(reply.answers) == 0 {
		reply.authority = &soa // NODATA
	}
}

// soaFor is the zone's SOA record. Its minimum, the time a negative
// answer may be cached (RFC 2308), is TTL too, so that a cluster the
// user gains access to resolves within seconds.
func soaFor(domain string) (dnsmessage.Resource, error) {
	apex, err := dnsmessage.NewName(domain + ".")
	if err != nil {
		return dnsmessage.Resource{}, err
	}
	mbox, err := dnsmessage.NewName("hostmaster." + domain + ".")
	if err != nil {
		return dnsmessage.Resource{}, err
	}
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: apex, Type: dnsmessage.TypeSOA, Class: dnsmessage.ClassINET, TTL: TTL},
		Body:   &dnsmessage.SOAResource{NS: apex, MBox: mbox, Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, MinTTL: TTL},
	}, nil
}

// response is a reply being assembled.
type response struct {
	id        uint16
	opCode    dnsmessage.OpCode
	rd, aa    bool
	rcode     dnsmessage.RCode
	question  *dnsmessage.Question
	answers   []dnsmessage.Resource
	authority *dnsmessage.Resource
	edns      bool
	udpSize   int
}

// pack writes the reply; if it is longer than limit, it writes it again
// truncated: the header and question only, with TC set.
func (r *response) pack(log *slog.Logger, limit int) []byte {
	if limit == udpLimit {
		limit = minUDPSize
	}
	msg, err := r.build(false)
	if err == nil && len(msg) > limit {
		msg, err = r.build(true)
	}
	if err != nil {
		log.Debug("dns: cannot pack the reply", "err", err)
		return nil
	}
	if r.question != nil {
		log.Debug("dns query", "name", r.question.Name.String(), "type", r.question.Type, "rcode", r.rcode, "answers", len(r.answers))
	}
	return msg
}

func (r *response) build(truncated bool) ([]byte, error) {
	b := dnsmessage.NewBuilder(make([]byte, 0, minUDPSize), dnsmessage.Header{
		ID: r.id, Response: true, OpCode: r.opCode, Authoritative: r.aa, Truncated: truncated,
		RecursionDesired: r.rd, RCode: r.rcode,
	})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if r.question != nil {
		if err := b.Question(*r.question); err != nil {
			return nil, err
		}
	}
	if !truncated {
		if err := b.StartAnswers(); err != nil {
			return nil, err
		}
		for _, a := range r.answers {
			var err error
			switch body := a.Body.(type) {
			case *dnsmessage.AResource:
				err = b.AResource(a.Header, *body)
			case *dnsmessage.AAAAResource:
				err = b.AAAAResource(a.Header, *body)
			case *dnsmessage.SOAResource:
				err = b.SOAResource(a.Header, *body)
			}
			if err != nil {
				return nil, err
			}
		}
		if r.authority != nil {
			if err := b.StartAuthorities(); err != nil {
				return nil, err
			}
			if err := b.SOAResource(r.authority.Header, *r.authority.Body.(*dnsmessage.SOAResource)); err != nil {
				return nil, err
			}
		}
	}
	if r.edns {
		if err := b.StartAdditionals(); err != nil {
			return nil, err
		}
		var h dnsmessage.ResourceHeader
		if err := h.SetEDNS0(maxUDPSize, dnsmessage.RCodeSuccess, false); err != nil {
			return nil, err
		}
		if err := b.OPTResource(h, dnsmessage.OPTResource{}); err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}
