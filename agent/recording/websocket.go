package recording

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// The Kubernetes remote command channels (k8s.io/apimachinery's
// remotecommand constants): the first byte of each WebSocket message, an
// ASCII digit in the base64 protocols.
const (
	chanStdin  = 0
	chanStdout = 1
	chanStderr = 2
	chanError  = 3
	chanResize = 4
	chanClose  = 255 // v5.channel.k8s.io: the client closed a channel
)

// Bounds of what a parser holds in memory: a resize message, and a whole
// message of a base64 protocol (decoded at its end).
const (
	maxResizeMessage = 4 << 10
	maxBase64Message = 1 << 20
)

// sink receives what a parser finds in a stream. Data slices are valid
// only during the call.
type sink interface {
	output(b []byte) error // stdout or stderr
	input(b []byte) error  // stdin
	resize(width, height int) error
}

// wsParser reads one direction of a WebSocket connection that carries the
// Kubernetes channel protocols (channel.k8s.io, v4 and v5, and their
// base64 forms) and hands stdin, stdout, stderr and resizes to a sink.
// Bytes are pushed in with Write in any pieces, as they cross the proxy;
// it holds only a frame header, a resize message, or a base64 message.
//
// It follows RFC 6455 framing (section 5.2): masked or not, fragmented
// messages, control frames (at most 125 bytes, never fragmented) between
// fragments. Extensions are not negotiated by the Kubernetes clients, so
// a frame with reserved bits set is an error, as is a continuation
// without a message or a new message inside one. After an error, Write
// returns it for ever.
//
// The frame parser is written here rather than taken from a WebSocket
// library: the libraries in the module graph (golang.org/x/net/websocket,
// gorilla/websocket) parse only frames of a connection they own, with its
// handshake, and not a stream of bytes observed between two other
// parties.
type wsParser struct {
	sink   sink
	base64 bool

	hdr  [14]byte
	hn   int // header bytes held
	need int // header bytes needed (2 until the length is known)

	inFrame   bool
	control   bool
	fin       bool
	remain    uint64
	masked    bool
	mask      [4]byte
	maskPos   int
	inMessage bool // a data message is open (more fragments follow)
	haveChan  bool // the message's channel byte was seen
	channel   byte
	msg       []byte // resize or base64 message so far
	scratch   []byte
	err       error
}

func newWSParser(s sink, base64 bool) *wsParser {
	return &wsParser{sink: s, base64: base64, need: 2}
}

func (p *wsParser) fail(format string, args ...any) error {
	p.err = fmt.Errorf("websocket stream: "+format, args...)
	return p.err
}

// Write parses b. It never keeps b.
func (p *wsParser) Write(b []byte) error {
	for len(b) > 0 && p.err == nil {
		if !p.inFrame {
			k := copy(p.hdr[p.hn:p.need], b)
			p.hn += k
			b = b[k:]
			if p.hn < p.need {
				return nil
			}
			if err := p.header(); err != nil {
				return err
			}
			continue
		}
		k := int(min(p.remain, uint64(len(b))))
		chunk := b[:k]
		b = b[k:]
		p.remain -= uint64(k)
		if p.masked {
			p.scratch = append(p.scratch[:0], chunk...)
			for i := range p.scratch {
				p.scratch[i] ^= p.mask[p.maskPos&3]
				p.maskPos++
			}
			chunk = p.scratch
		}
		if !p.control {
			if err := p.payload(chunk); err != nil {
				return err
			}
		}
		if p.remain == 0 {
			if err := p.endFrame(); err != nil {
				return err
			}
		}
	}
	return p.err
}

// header decodes the frame header held in hdr once hn == need, or raises
// need to the full header's length.
func (p *wsParser) header() error {
	if p.need == 2 {
		n := 2
		switch p.hdr[1] & 0x7f {
		case 126:
			n += 2
		case 127:
			n += 8
		}
		if p.hdr[1]&0x80 != 0 {
			n += 4
		}
		if n > 2 {
			p.need = n
			return nil
		}
	}
	b0, b1 := p.hdr[0], p.hdr[1]
	if b0&0x70 != 0 {
		return p.fail("frame with reserved bits set (no extension is negotiated)")
	}
	p.fin = b0&0x80 != 0
	opcode := b0 & 0x0f
	p.masked = b1&0x80 != 0
	off := 2
	switch l := b1 & 0x7f; l {
	case 126:
		p.remain = uint64(binary.BigEndian.Uint16(p.hdr[2:]))
		off += 2
	case 127:
		p.remain = binary.BigEndian.Uint64(p.hdr[2:])
		off += 8
		if p.remain>>63 != 0 {
			return p.fail("frame length has its top bit set")
		}
	default:
		p.remain = uint64(l)
	}
	if p.masked {
		copy(p.mask[:], p.hdr[off:off+4])
	}
	p.maskPos = 0
	p.hn, p.need = 0, 2
	p.inFrame = true
	switch {
	case opcode >= 8:
		if opcode > 10 {
			return p.fail("unknown control opcode %d", opcode)
		}
		if !p.fin || p.remain > 125 {
			return p.fail("control frame fragmented or over 125 bytes")
		}
		p.control = true
	case opcode == 0:
		if !p.inMessage {
			return p.fail("continuation frame outside a message")
		}
		p.control = false
	case opcode <= 2:
		if p.inMessage {
			return p.fail("new message before the last one ended")
		}
		p.control = false
		p.inMessage, p.haveChan, p.msg = true, false, p.msg[:0]
	default:
		return p.fail("unknown data opcode %d", opcode)
	}
	if p.remain == 0 {
		return p.endFrame()
	}
	return nil
}

func (p *wsParser) endFrame() error {
	p.inFrame = false
	if p.control || !p.fin {
		return nil
	}
	p.inMessage = false
	if !p.haveChan {
		return nil // an empty message
	}
	switch {
	case p.base64:
		data, err := base64.StdEncoding.AppendDecode(nil, p.msg)
		if err != nil {
			return p.fail("channel %d message is not base64: %v", p.channel, err)
		}
		return p.deliver(data, true)
	case p.channel == chanResize:
		return p.resize(p.msg)
	}
	return nil
}

// payload handles bytes of a data message.
func (p *wsParser) payload(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if !p.haveChan {
		p.haveChan = true
		c := b[0]
		if p.base64 {
			if c < '0' || c > '9' {
				return p.fail("base64 channel byte %q is not a digit", c)
			}
			c -= '0'
		}
		p.channel = c
		b = b[1:]
	}
	if p.base64 || p.channel == chanResize {
		limit := maxResizeMessage
		if p.base64 {
			limit = maxBase64Message
		}
		if len(p.msg)+len(b) > limit {
			return p.fail("channel %d message over %d bytes", p.channel, limit)
		}
		p.msg = append(p.msg, b...)
		return nil
	}
	return p.deliver(b, false)
}

// deliver hands data of the current channel to the sink; whole says it
// is a complete message (a resize is parsed only then).
func (p *wsParser) deliver(b []byte, whole bool) error {
	var err error
	switch p.channel {
	case chanStdin:
		err = p.sink.input(b)
	case chanStdout, chanStderr:
		err = p.sink.output(b)
	case chanResize:
		if whole {
			err = p.resize(b)
		}
	default:
		// error (3) carries the exit status, 255 (v5) closes a channel;
		// no other channel reaches the process, so none is recorded.
	}
	if err != nil {
		p.err = err
	}
	return err
}

func (p *wsParser) resize(b []byte) error {
	w, h, err := parseResize(b)
	if err != nil {
		return p.fail("%v", err)
	}
	if err := p.sink.resize(w, h); err != nil {
		p.err = err
		return err
	}
	return nil
}

// termSize is a resize message (k8s.io/client-go's remotecommand
// TerminalSize).
type termSize struct {
	Width  uint16
	Height uint16
}

// parseResize decodes one resize message.
func parseResize(b []byte) (int, int, error) {
	var s termSize
	if err := json.Unmarshal(b, &s); err != nil {
		return 0, 0, errors.New("resize message is not a terminal size: " + err.Error())
	}
	return int(s.Width), int(s.Height), nil
}
