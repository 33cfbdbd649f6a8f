package dns

import (
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// FuzzAnswer gives the server arbitrary messages, as anyone on the
// machine may send them. Answer never panics; a reply always parses,
// carries the query's id, is a response, fits the transport, and holds
// addresses only for a name the zone has.
func FuzzAnswer(f *testing.F) {
	for _, q := range []struct {
		name string
		typ  dnsmessage.Type
		edns int
	}{
		{"prod.clustral.internal.", dnsmessage.TypeA, 0},
		{"prod.clustral.internal.", dnsmessage.TypeAAAA, 1232},
		{"PROD.clustral.internal.", dnsmessage.TypeALL, 4096},
		{"clustral.internal.", dnsmessage.TypeSOA, 0},
		{"staging.clustral.internal.", dnsmessage.TypeA, 0},
		{"example.com.", dnsmessage.TypeA, 0},
		{".", dnsmessage.TypeNS, 0},
	} {
		f.Add(query(f, q.name, q.typ, q.edns), false)
	}
	f.Add([]byte{0x42, 0x42, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0}, true)
	f.Add([]byte{0x42, 0x42, 0x10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1}, false)
	f.Fuzz(func(t *testing.T, msg []byte, tcp bool) {
		s := &Server{Zone: testZone()}
		limit := udpLimit
		if tcp {
			limit = maxTCPSize
		}
		b := s.Answer(msg, limit)
		if b == nil {
			return
		}
		if len(b) > maxUDPSize && !tcp {
			t.Fatalf("a UDP reply of %d bytes", len(b))
		}
		var q dnsmessage.Header
		var p dnsmessage.Parser
		q, _ = p.Start(msg) // Answer replied, so the header parsed
		var r dnsmessage.Message
		if err := r.Unpack(b); err != nil {
			t.Fatalf("the reply does not parse: %v", err)
		}
		if r.Header.ID != q.ID || !r.Header.Response || r.Header.RecursionAvailable {
			t.Fatalf("reply header %+v to query header %+v", r.Header, q)
		}
		for _, a := range r.Answers {
			if a.Header.Type != dnsmessage.TypeA && a.Header.Type != dnsmessage.TypeAAAA {
				continue
			}
			if _, err := s.Zone.Lookup(lowerName(a.Header.Name)); err != nil {
				t.Fatalf("an address for %s, which the zone does not have", a.Header.Name)
			}
		}
	})
}

func lowerName(n dnsmessage.Name) string {
	s := []byte(n.String())
	for i, c := range s {
		if 'A' <= c && c <= 'Z' {
			s[i] = c + 'a' - 'A'
		}
	}
	if len(s) > 0 && s[len(s)-1] == '.' {
		s = s[:len(s)-1]
	}
	return string(s)
}
