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

// Write hands b to the framer and waits until it has consumed it.
func (p *spdyParser) Write(b []byte) error {
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
