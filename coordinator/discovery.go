package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/clustral/clustral/proto"
)

// Endpoint discovery: a node sends a proto.ProbePing to the coordinator's
// UDP discovery port and learns, from the pong, the address and port its
// NAT maps its WireGuard socket to. ListenAndServe runs it on
// Config.STUNListen; registrations name its address (RegisterResponse.STUN).

// DefaultSTUNPort is the discovery port when Config.STUNListen is empty.
const DefaultSTUNPort = "3478"

// listenSTUN opens the UDP socket of endpoint discovery as
// Config.STUNListen says: "" means DefaultSTUNPort on the Listen host,
// best effort (a busy port is logged, and nil is returned); "0" or "off"
// turns discovery off (nil); a bare port means that port on the Listen
// host; anything else is a host:port. An explicit address that cannot be
// bound is an error.
func (s *Server) listenSTUN() (net.PacketConn, error) {
	flag := s.cfg.STUNListen
	if flag == "0" || flag == "off" {
		return nil, nil
	}
	host, _, _ := net.SplitHostPort(s.cfg.Listen)
	addr, explicit := flag, flag != ""
	switch {
	case flag == "":
		addr = net.JoinHostPort(host, DefaultSTUNPort)
	case !strings.Contains(flag, ":"):
		addr = net.JoinHostPort(host, flag)
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		if explicit {
			return nil, fmt.Errorf("--stun-listen %s: %w", addr, err)
		}
		s.log.Warn("endpoint discovery off: its default port is busy (set --stun-listen)", "addr", addr, "err", err)
		return nil, nil
	}
	return pc, nil
}

// ServeSTUN answers endpoint-discovery pings on pc until ctx is done or pc
// fails: each proto.ProbePing gets a proto.ProbePong, of the same size,
// carrying the address and port the ping came from. ServeSTUN closes pc.
// While it runs, registrations name its port (RegisterResponse.STUN).
func (s *Server) ServeSTUN(ctx context.Context, pc net.PacketConn) error {
	u, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return errors.New("serve STUN: not a UDP socket")
	}
	if ap, err := netip.ParseAddrPort(u.LocalAddr().String()); err == nil {
		s.relay.stunPort.Store(uint32(ap.Port()))
	}
	defer s.relay.stunPort.Store(0)
	stop := context.AfterFunc(ctx, func() { u.Close() })
	defer stop()
	defer u.Close()
	s.log.Info("endpoint discovery listening", "addr", u.LocalAddr().String())
	buf := make([]byte, 1500)
	var out []byte
	for {
		n, from, err := u.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		p, ok := proto.ParseProbe(buf[:n])
		if !ok || p.Type != proto.ProbePing {
			continue
		}
		pong := proto.Probe{Type: proto.ProbePong, TxID: p.TxID, Observed: netip.AddrPortFrom(from.Addr().Unmap(), from.Port())}
		out, _ = pong.AppendBinary(out[:0])
		if _, err := u.WriteToUDPAddrPort(out, from); err == nil {
			s.relay.stunRequests.Add(1)
		}
	}
}

// stunAddr is the discovery address nodes are told: the public URL's host
// and the port ServeSTUN listens on, or "" when it does not run.
func (s *Server) stunAddr() string {
	port := s.relay.stunPort.Load()
	if port == 0 {
		return ""
	}
	u, err := url.Parse(s.cfg.PublicURL)
	if err != nil {
		return ""
	}
	return net.JoinHostPort(u.Hostname(), strconv.Itoa(int(port)))
}
