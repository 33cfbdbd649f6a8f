package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/clustral/clustral/coordinator"
)

// defaultSTUNPort is the coordinator's endpoint-discovery port unless
// --stun-listen says otherwise.
const defaultSTUNPort = "3478"

// serveSTUN runs the coordinator's endpoint-discovery service on the UDP
// address of --stun-listen: "" means port 3478 on the --listen host, best
// effort (a busy port is logged, not fatal); "0" or "off" turns it off;
// a bare port means that port on the --listen host.
func serveSTUN(ctx context.Context, srv *coordinator.Server, flag, listen string, log *slog.Logger) error {
	if flag == "0" || flag == "off" {
		return nil
	}
	host, _, _ := net.SplitHostPort(listen)
	addr, explicit := flag, flag != ""
	switch {
	case flag == "":
		addr = net.JoinHostPort(host, defaultSTUNPort)
	case !strings.Contains(flag, ":"):
		addr = net.JoinHostPort(host, flag)
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		if explicit {
			return fmt.Errorf("--stun-listen %s: %w", addr, err)
		}
		log.Warn("endpoint discovery off: its default port is busy (set --stun-listen)", "addr", addr, "err", err)
		return nil
	}
	go func() {
		if err := srv.ServeSTUN(ctx, pc); err != nil {
			log.Error("endpoint discovery stopped", "err", err)
		}
	}()
	return nil
}
