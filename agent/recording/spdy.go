package recording

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/moby/spdystream/spdy"
)

// Bounds for the SPDY framer: control frames (SYN_STREAM headers) of the
// remote command protocol are a few hundred bytes.
const (
	maxSPDYControl     = 64 << 10
	maxSPDYHeaderField = 4 << 10
	maxSPDYHeaders     = 64
)

// spdyStreams maps the stream ids of a SPDY connection to their
// "streamtype" header (stdin, stdout, stderr, error, resize). The client
// opens every stream, so the parser of the client's direction fills it
// and both parsers read it.
type spdyStreams struct {
	mu    sync.Mutex
	types map[spdy.StreamId]string
}

func (s *spdyStreams) set(id spdy.StreamId, t string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.types[id] = t
}

func (s *spdyStreams) get(id spdy.StreamId) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.types[id]
}

// spdyParser reads one direction of a SPDY/3.1 connection carrying the
// Kubernetes remote command protocol, with the framer of
// github.com/moby/spdystream (the one client-go and the kubelet use), and
// hands stdin, stdout, stderr and resizes to a sink.
//
// The framer pulls bytes; the proxy pushes them. Write hands its bytes to
// the framer's goroutine and returns once the framer has consumed them
// all and asks for more, so every frame that ends in b has reached the
// sink when Write returns: a stream the client opened is known before the
// pod can answer on it. After an error Write returns it for ever.
type spdyParser struct {
	sink    sink
	streams *spdyStreams
	resize  map[spdy.StreamId][]byte // partial resize lines

	cut  spdyCut
	werr error // Write's own error, returned for ever

	in     chan []byte
	took   chan struct{} // the framer consumed the last chunk
	exited chan struct{} // the framer's goroutine returned
	err    error         // set before exited closes
	cur    []byte
	busy   bool // cur came from in and took is owed
}

func newSPDYParser(s sink, streams *spdyStreams) *spdyParser {
	p := &spdyParser{sink: s, streams: streams, resize: map[spdy.StreamId][]byte{},
		in: make(chan []byte), took: make(chan struct{}), exited: make(chan struct{})}
	f, err := spdy.NewFramerWithOptions(io.Discard, p,
		spdy.WithMaxControlFramePayloadSize(maxSPDYControl),
		spdy.WithMaxHeaderFieldSize(maxSPDYHeaderField),
		spdy.WithMaxHeaderCount(maxSPDYHeaders))
	if err != nil { // only if zlib refuses its dictionary
		p.err = fmt.Errorf("spdy stream: %w", err)
		close(p.exited)
		return p
	}
	go p.run(f)
	return p
}

// Read is the framer's side of the hand-off.
func (p *spdyParser) Read(b []byte) (int, error) {
	if len(p.cur) == 0 {
		if p.busy {
			p.busy = false
			p.took <- struct{}{}
		}
		c, ok := <-p.in
		if !ok {
			return 0, io.EOF
		}
		p.cur, p.busy = c, true
	}
	n := copy(b, p.cur)
	p.cur = p.cur[n:]
	return n, nil
}

func (p *spdyParser) run(f *spdy.Framer) {
	var err error
	for err == nil {
		var fr spdy.Frame
		if fr, err = f.ReadFrame(); err == nil {
			err = p.frame(fr)
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = nil // Close, possibly in the middle of a frame: the connection ended
	}
	if err != nil && p.err == nil {
		p.err = err
	}
	close(p.exited)
}

func (p *spdyParser) frame(fr spdy.Frame) error {
	switch fr := fr.(type) {
	case *spdy.SynStreamFrame:
		p.streams.set(fr.StreamId, fr.Headers.Get("streamtype"))
	case *spdy.DataFrame:
		switch p.streams.get(fr.StreamId) {
		case "stdin":
			return p.sink.input(fr.Data)
		case "stdout", "stderr":
			return p.sink.output(fr.Data)
		case "resize":
			return p.resizeData(fr.StreamId, fr.Data)
		}
	}
	return nil
}

// resizeData handles bytes of a resize stream: JSON terminal sizes, one
// per line (client-go writes them with a json.Encoder).
func (p *spdyParser) resizeData(id spdy.StreamId, b []byte) error {
	buf := append(p.resize[id], b...)
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		w, h, err := parseResize(buf[:i])
		if err != nil {
			return fmt.Errorf("spdy stream: %w", err)
		}
		if err := p.sink.resize(w, h); err != nil {
			return err
		}
		buf = buf[i+1:]
	}
	if len(buf) > maxResizeMessage {
		return fmt.Errorf("spdy stream: resize message over %d bytes", maxResizeMessage)
	}
	p.resize[id] = append([]byte(nil), buf...)
	return nil
}

// Write hands b to the framer and waits until it has consumed it. A
// control frame is handed only once it is whole (see spdyCut); its bytes
// that end b stay with the parser until the next Write.
func (p *spdyParser) Write(b []byte) error {
	if p.werr != nil {
		return p.werr
	}
	if err := p.cut.cut(b, p.hand); err != nil {
		p.werr = err
		return err
	}
	return nil
}

// hand gives b to the framer and waits until it has consumed it.
func (p *spdyParser) hand(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	select {
	case p.in <- b:
	case <-p.exited:
		return p.exitErr()
	}
	select {
	case <-p.took:
		return nil
	case <-p.exited:
		return p.exitErr()
	}
}

func (p *spdyParser) exitErr() error {
	if p.err != nil {
		return fmt.Errorf("spdy stream: %w", p.err)
	}
	return errors.New("spdy stream: ended")
}

// Close ends the framer's goroutine and waits for it.
func (p *spdyParser) Close() {
	select {
	case <-p.exited:
	default:
		close(p.in)
		<-p.exited
	}
}

// spdyCut finds the frame boundaries in one direction of a SPDY
// connection so that the framer is handed each control frame whole. The
// framer inflates a control frame's header block through a buffered zlib
// reader, which reads as far ahead as the bytes at hand allow; handed part
// of a frame whose header block has bytes after the end of its zlib
// stream, it fails where the whole frame passes. Gathering control frames
// (at most maxSPDYControl bytes, and rare) makes the outcome independent
// of how the bytes were cut into segments. Data frames, which carry the
// session's bytes, pass through as they come.
type spdyCut struct {
	left int    // payload bytes of the current data frame not yet seen
	pend []byte // a frame header, or a control frame, being gathered
}

// spdyFrameLen returns the payload length in a SPDY frame header: the
// low 24 bits of its second word, for control and data frames alike.
func spdyFrameLen(h []byte) int {
	return int(h[5])<<16 | int(h[6])<<8 | int(h[7])
}

// cut hands b to the framer in order through hand: runs of b that need
// no gathering as they are, and gathered headers and control frames once
// whole. hand must be done with its argument when it returns.
func (c *spdyCut) cut(b []byte, hand func([]byte) error) error {
	const header = 8
	start, i := 0, 0 // b[start:i] is a run to hand as it is
	for i < len(b) {
		if c.left > 0 {
			n := min(c.left, len(b)-i)
			c.left -= n
			i += n
			continue
		}
		if len(c.pend) == 0 && len(b)-i >= header && b[i]&0x80 == 0 {
			c.left = spdyFrameLen(b[i:]) // a data frame's header, whole in b
			i += header
			continue
		}
		if err := hand(b[start:i]); err != nil {
			return err
		}
		need := header - len(c.pend)
		if len(c.pend) >= header {
			need = header + spdyFrameLen(c.pend) - len(c.pend)
		}
		n := min(need, len(b)-i)
		c.pend = append(c.pend, b[i:i+n]...)
		i += n
		start = i
		if len(c.pend) < header {
			continue
		}
		l := spdyFrameLen(c.pend)
		if c.pend[0]&0x80 == 0 { // a data frame's header, gathered
			c.left = l
		} else if l > maxSPDYControl {
			return fmt.Errorf("spdy stream: control frame of %d bytes is over the limit of %d", l, maxSPDYControl)
		} else if len(c.pend) < header+l {
			continue
		}
		if err := hand(c.pend); err != nil {
			return err
		}
		c.pend = c.pend[:0]
	}
	return hand(b[start:i])
}
