package netstack

import (
	"testing"

	"github.com/clustral/clustral/proto"
)

// TestDefaultMTUIsTheTunnelMTU: the coordinator's relay refuses datagrams
// over proto.MaxRelayDatagram, computed from proto.TunnelMTU; a larger
// netstack MTU would make full-size packets unrelayable.
func TestDefaultMTUIsTheTunnelMTU(t *testing.T) {
	if DefaultMTU != proto.TunnelMTU {
		t.Fatalf("netstack.DefaultMTU %d differs from proto.TunnelMTU %d: change both, and proto.MaxRelayDatagram with them", DefaultMTU, proto.TunnelMTU)
	}
}
