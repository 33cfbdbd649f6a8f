package proto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// relaySeeds are well-formed and malformed relay byte streams.
func relaySeeds() [][]byte {
	var k Key
	for i := range k {
		k[i] = byte(i + 1)
	}
	over := binary.BigEndian.AppendUint32([]byte{byte(RelayFramePacket)}, MaxRelayPayload+1)
	return [][]byte{
		AppendRelayPacket(nil, k, []byte("hello")),
		AppendRelayKeepAlive(AppendRelayPacket(nil, k, make([]byte, MaxRelayDatagram))),
		AppendRelayPacket(AppendRelayKeepAlive(nil), k, make([]byte, MaxRelayDatagram+1)),
		{byte(RelayFramePacket), 0, 0, 0, 32}, // a key and no datagram, truncated
		append([]byte{byte(RelayFramePacket), 0, 0, 0, 32}, k[:]...),
		{9, 0, 0, 0, 2, 'h', 'i'}, // a frame type of a later version
		over,
		{byte(RelayFramePacket), 0xff, 0xff, 0xff, 0xff},
		{},
		AppendRelayForward(nil, k, k, []byte("hello")),
		append([]byte{byte(RelayFrameForward), 0, 0, 0, 64}, append(k[:], k[:]...)...), // two keys, no datagram
	}
}

// FuzzRelayFrame reads a stream of relay frames as both ends of a relay
// connection do. Whatever the bytes, reading never panics, never returns
// a payload over the limits, and a packet frame it accepts re-encodes to
// exactly the bytes it was read from.
func FuzzRelayFrame(f *testing.F) {
	for _, s := range relaySeeds() {
		f.Add(s)
	}
	buf := make([]byte, RelayFrameHeaderLen+MaxRelayPayload)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			start := len(data) - r.Len()
			typ, payload, err := ReadRelayFrame(r, buf)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrRelayFrame) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			end := len(data) - r.Len()
			if len(payload) > MaxRelayPayload || end-start != RelayFrameHeaderLen+len(payload) {
				t.Fatalf("payload of %d bytes from %d bytes of frame", len(payload), end-start)
			}
			if typ == RelayFrameForward {
				src, dst, pkt, err := ParseRelayForward(payload)
				if err != nil {
					if !errors.Is(err, ErrRelayFrame) || len(payload) > 2*len(src) {
						t.Fatalf("ParseRelayForward(%d bytes) = %v", len(payload), err)
					}
					continue
				}
				if again := AppendRelayForward(nil, src, dst, pkt); !bytes.Equal(again, data[start:end]) {
					t.Fatalf("re-encoded forward frame differs:\n got %x\nwant %x", again, data[start:end])
				}
				continue
			}
			if typ != RelayFramePacket {
				continue
			}
			k, pkt, err := ParseRelayPacket(payload)
			if err != nil {
				if !errors.Is(err, ErrRelayFrame) || len(payload) > len(k) {
					t.Fatalf("ParseRelayPacket(%d bytes) = %v", len(payload), err)
				}
				continue
			}
			if again := AppendRelayPacket(nil, k, pkt); !bytes.Equal(again, data[start:end]) {
				t.Fatalf("re-encoded frame differs:\n got %x\nwant %x", again, data[start:end])
			}
		}
	})
}
