package node

import (
	"bytes"
	"testing"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
)

// FuzzHandshakeIn feeds the Bind's receive paths arbitrary datagrams from
// its peer (direct, or through the relay) or from a stranger's address,
// with the peer ready or not and this node leading or not, after this node
// sent the peer an initiation. It never panics, holds at most maxHeld
// initiations, and what it passes to wireguard-go is the datagram as it
// came.
func FuzzHandshakeIn(f *testing.F) {
	initiation := make([]byte, device.MessageInitiationSize)
	initiation[0], initiation[4] = device.MessageInitiationType, 1
	response := make([]byte, device.MessageResponseSize)
	response[0], response[8] = device.MessageResponseType, 9
	for _, s := range [][]byte{initiation, response, initiation[:100], {1, 0, 0, 0}, {}} {
		f.Add(s, byte(0))
		f.Add(s, byte(0b1111))
	}
	f.Fuzz(func(t *testing.T, pkt []byte, flags byte) {
		relayed, stranger, ready, lead := flags&1 != 0, flags&2 != 0, flags&4 != 0, flags&8 != 0
		b, _, peer, _ := fuzzProbeSetup(t)
		if ready {
			b.peerReady(peer, lead)
		}
		ours := make([]byte, device.MessageInitiationSize)
		ours[0], ours[4] = device.MessageInitiationType, 9
		if err := b.Send([][]byte{ours}, b.endpointOf(peer)); err != nil {
			t.Fatal(err)
		}
		if relayed {
			buf := getPacketBuf(len(pkt))
			copy(*buf, pkt)
			b.deliverRelay(peer, buf, 0, len(pkt))
			select {
			case p := <-b.relayIn:
				if got := (*p.buf)[p.off : p.off+p.n]; !bytes.Equal(got, pkt) {
					t.Fatalf("relayed %x, wireguard-go got %x", pkt, got)
				}
				putPacketBuf(p.buf)
			default:
			}
		} else {
			from := fuzzPeerAddr
			if stranger {
				from = fuzzFrom
			}
			recv := b.receiveDirect(func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
				sizes[0] = copy(bufs[0], pkt)
				eps[0] = &conn.StdNetEndpoint{AddrPort: from}
				return 1, nil
			})
			bufs, sizes, eps := [][]byte{make([]byte, 2048)}, make([]int, 1), make([]conn.Endpoint, 1)
			if _, err := recv(bufs, sizes, eps); err != nil {
				t.Fatal(err)
			}
			if sizes[0] > 0 && !bytes.Equal(bufs[0][:sizes[0]], pkt[:min(len(pkt), 2048)]) {
				t.Fatalf("received %x, wireguard-go got %x", pkt, bufs[0][:sizes[0]])
			}
		}
		b.held.Lock()
		n := len(b.held.bySrc)
		b.held.Unlock()
		if n > maxHeld {
			t.Fatalf("%d initiations held, more than %d", n, maxHeld)
		}
		if pp := b.peers.paths[peer]; pp != nil {
			pp.mu.Lock()
			pp.dropCrossedLocked()
			pp.mu.Unlock()
		}
	})
}
