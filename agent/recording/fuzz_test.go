package recording

import (
	"fmt"
	"testing"

	"github.com/moby/spdystream/spdy"
)

// feedSplit writes b to w in two pieces, cut at split, and returns the
// first error.
func feedSplit(w func([]byte) error, b []byte, split uint) error {
	k := int(split % uint(len(b)+1))
	if err := w(b[:k]); err != nil {
		return err
	}
	return w(b[k:])
}

// FuzzWebSocketParser checks that the WebSocket channel parser survives
// any bytes from either party, and finds the same events however the
// bytes are cut.
func FuzzWebSocketParser(f *testing.F) {
	f.Add(wsMessage(1, "hello", nil), uint(3), false)
	f.Add(append(wsMessage(0, "ls\r", mask), wsMessage(4, `{"Width":80,"Height":24}`, mask)...), uint(9), false)
	f.Add(append(wsFrame(false, 2, []byte("\x01ab"), mask), append(wsFrame(true, 9, nil, mask), wsFrame(true, 0, []byte("cd"), mask)...)...), uint(4), false)
	f.Add(wsFrame(true, 1, []byte("1aGk="), nil), uint(2), true)
	f.Add([]byte{0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0}, uint(1), false)
	f.Fuzz(func(t *testing.T, b []byte, split uint, b64 bool) {
		var whole, cut events
		errWhole := newWSParser(&whole, b64).Write(b)
		errCut := feedSplit(newWSParser(&cut, b64).Write, b, split)
		if (errWhole == nil) != (errCut == nil) {
			t.Fatalf("whole: %v, cut at %d: %v", errWhole, split, errCut)
		}
		if errWhole == nil && fmt.Sprint(whole.merged()) != fmt.Sprint(cut.merged()) {
			t.Fatalf("whole: %q, cut: %q", whole.merged(), cut.merged())
		}
	})
}

// FuzzSPDYParser checks that the SPDY parser survives any bytes, and
// finds the same events however they are cut.
func FuzzSPDYParser(f *testing.F) {
	f.Add(spdyFrames(f, synStream(1, "stdin"), synStream(3, "resize"), data(1, "id\r"), data(3, `{"Width":1,"Height":2}`+"\n")), uint(20))
	f.Add(spdyFrames(f, synStream(5, "stdout"), data(5, "out"), &spdy.PingFrame{Id: 1}), uint(7))
	f.Add(spdyFrames(f, &spdy.SettingsFrame{FlagIdValues: []spdy.SettingsFlagIdValue{{Id: spdy.SettingsInitialWindowSize, Value: 1 << 16}}}), uint(3))
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 3, 'a', 'b', 'c'}, uint(5))
	f.Fuzz(func(t *testing.T, b []byte, split uint) {
		run := func(feed func(p *spdyParser) error) ([]string, error) {
			var ev events
			p := newSPDYParser(&ev, &spdyStreams{types: map[spdy.StreamId]string{}})
			err := feed(p)
			p.Close()
			return ev.merged(), err
		}
		whole, errWhole := run(func(p *spdyParser) error { return p.Write(b) })
		cut, errCut := run(func(p *spdyParser) error { return feedSplit(p.Write, b, split) })
		if (errWhole == nil) != (errCut == nil) {
			t.Fatalf("whole: %v, cut at %d: %v", errWhole, split, errCut)
		}
		if errWhole == nil && fmt.Sprint(whole) != fmt.Sprint(cut) {
			t.Fatalf("whole: %q, cut: %q", whole, cut)
		}
	})
}
