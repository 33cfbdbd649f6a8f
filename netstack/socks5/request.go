package socks5

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// Protocol constants from RFC 1928 and RFC 1929.
const (
	socksVersion    = 0x05
	userPassVersion = 0x01

	methodUserPass     = 0x02
	methodNoAcceptable = 0xff

	cmdConnect      = 0x01
	cmdBind         = 0x02
	cmdUDPAssociate = 0x03

	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04
)

// request is a parsed CONNECT request.
type request struct {
	host string // IP literal or domain name
	port uint16
	atyp byte
}

func (r request) String() string {
	return net.JoinHostPort(r.host, strconv.Itoa(int(r.port)))
}

// readRequest reads one request (RFC 1928 section 4). On error it also
// returns the reply the client should get, or ReplySucceeded when the
// stream is too broken to answer at all.
func readRequest(r io.Reader) (request, Reply, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return request{}, ReplySucceeded, fmt.Errorf("read request: %w", err)
	}
	if hdr[0] != socksVersion {
		return request{}, ReplyGeneralFailure, fmt.Errorf("request version %d", hdr[0])
	}
	if hdr[2] != 0 {
		return request{}, ReplyGeneralFailure, fmt.Errorf("reserved byte %#x", hdr[2])
	}
	switch hdr[1] {
	case cmdConnect:
	case cmdBind, cmdUDPAssociate:
		return request{}, ReplyCommandNotSupported, fmt.Errorf("command %d not supported", hdr[1])
	default:
		return request{}, ReplyCommandNotSupported, fmt.Errorf("unknown command %d", hdr[1])
	}

	req := request{atyp: hdr[3]}
	switch hdr[3] {
	case atypIPv4, atypIPv6:
		b := make([]byte, 4)
		if hdr[3] == atypIPv6 {
			b = make([]byte, 16)
		}
		if _, err := io.ReadFull(r, b); err != nil {
			return request{}, ReplySucceeded, fmt.Errorf("read address: %w", err)
		}
		a, _ := netip.AddrFromSlice(b)
		req.host = a.String()
	case atypDomain:
		var n [1]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return request{}, ReplySucceeded, fmt.Errorf("read name length: %w", err)
		}
		name := make([]byte, n[0])
		if _, err := io.ReadFull(r, name); err != nil {
			return request{}, ReplySucceeded, fmt.Errorf("read name: %w", err)
		}
		if err := checkName(name); err != nil {
			return request{}, ReplyHostUnreachable, err
		}
		req.host = string(name)
	default:
		return request{}, ReplyAddrTypeNotSupported, fmt.Errorf("address type %d not supported", hdr[3])
	}

	var port [2]byte
	if _, err := io.ReadFull(r, port[:]); err != nil {
		return request{}, ReplySucceeded, fmt.Errorf("read port: %w", err)
	}
	req.port = binary.BigEndian.Uint16(port[:])
	if req.port == 0 {
		return request{}, ReplyHostUnreachable, errors.New("port 0")
	}
	return req, ReplySucceeded, nil
}

// checkName accepts a DNS name of letters, digits, hyphens, underscores
// and dots, or an IP literal; anything else cannot name a mesh host.
func checkName(name []byte) error {
	if len(name) == 0 {
		return errors.New("empty domain name")
	}
	if a, err := netip.ParseAddr(string(name)); err == nil {
		if a.Zone() != "" {
			return errors.New("IPv6 zone in address")
		}
		return nil
	}
	for _, c := range name {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '.', c == '_':
		default:
			return fmt.Errorf("invalid character %q in domain name", c)
		}
	}
	return nil
}

// encode returns the wire form of r.
func (r request) encode() []byte {
	b := []byte{socksVersion, cmdConnect, 0, r.atyp}
	switch r.atyp {
	case atypIPv4, atypIPv6:
		a := netip.MustParseAddr(r.host)
		b = append(b, a.AsSlice()...)
	case atypDomain:
		b = append(b, byte(len(r.host)))
		b = append(b, r.host...)
	}
	return binary.BigEndian.AppendUint16(b, r.port)
}

// writeReply sends a reply with the given bound address; an invalid bound
// address is sent as 0.0.0.0:0.
func writeReply(w io.Writer, rep Reply, bound netip.AddrPort) error {
	a := bound.Addr().Unmap()
	b := []byte{socksVersion, byte(rep), 0}
	switch {
	case a.Is6():
		b = append(b, atypIPv6)
		b = append(b, a.AsSlice()...)
	case a.Is4():
		b = append(b, atypIPv4)
		b = append(b, a.AsSlice()...)
	default:
		b = append(b, atypIPv4, 0, 0, 0, 0)
	}
	b = binary.BigEndian.AppendUint16(b, bound.Port())
	_, err := w.Write(b)
	return err
}

// readUserPass reads an RFC 1929 username/password request.
func readUserPass(r io.Reader) (user, pass []byte, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, nil, fmt.Errorf("read auth: %w", err)
	}
	if hdr[0] != userPassVersion {
		return nil, nil, fmt.Errorf("auth version %d", hdr[0])
	}
	user = make([]byte, hdr[1])
	if _, err := io.ReadFull(r, user); err != nil {
		return nil, nil, fmt.Errorf("read username: %w", err)
	}
	var plen [1]byte
	if _, err := io.ReadFull(r, plen[:]); err != nil {
		return nil, nil, fmt.Errorf("read password length: %w", err)
	}
	pass = make([]byte, plen[0])
	if _, err := io.ReadFull(r, pass); err != nil {
		return nil, nil, fmt.Errorf("read password: %w", err)
	}
	return user, pass, nil
}
