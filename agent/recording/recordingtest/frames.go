// Package recordingtest encodes the streams of kubectl exec and attach,
// as client-go and the kubelet put them on the wire, for tests of the
// recording parsers and of the proxy that records them.
package recordingtest

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"testing"

	"github.com/moby/spdystream/spdy"
)

// ClientMask is the masking key the tests' client frames use.
var ClientMask = []byte{0x37, 0xfa, 0x21, 0x3d}

// WSFrame encodes one WebSocket frame (RFC 6455); a non-nil mask masks
// it, as a client does.
func WSFrame(fin bool, opcode byte, payload []byte, mask []byte) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0}
	var m byte
	if mask != nil {
		m = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, m|byte(n))
	case n <= 0xffff:
		b = append(b, m|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, m|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if mask == nil {
		return append(b, payload...)
	}
	b = append(b, mask...)
	for i, c := range payload {
		b = append(b, c^mask[i%4])
	}
	return b
}

// WSMessage is one whole binary message on a channel of the Kubernetes
// channel protocols; mask as for WSFrame.
func WSMessage(channel byte, data string, mask []byte) []byte {
	return WSFrame(true, 2, append([]byte{channel}, data...), mask)
}

// SPDYFrames encodes frames with the spdystream framer.
func SPDYFrames(tb testing.TB, frames ...spdy.Frame) []byte {
	tb.Helper()
	var buf bytes.Buffer
	f, err := spdy.NewFramer(&buf, nil)
	if err != nil {
		tb.Fatal(err)
	}
	for _, fr := range frames {
		if err := f.WriteFrame(fr); err != nil {
			tb.Fatal(err)
		}
	}
	return buf.Bytes()
}

// SynStream opens stream id of the remote command protocol's type
// (stdin, stdout, stderr, error, resize).
func SynStream(id spdy.StreamId, streamType string) *spdy.SynStreamFrame {
	return &spdy.SynStreamFrame{StreamId: id, Headers: http.Header{"Streamtype": {streamType}}}
}

// Data is a data frame of stream id.
func Data(id spdy.StreamId, s string) *spdy.DataFrame {
	return &spdy.DataFrame{StreamId: id, Data: []byte(s)}
}
