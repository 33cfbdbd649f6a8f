package recording

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/moby/spdystream/spdy"

	"github.com/clustral/clustral/agent/recording/recordingtest"
)

// Shorter names for the encoders of recordingtest.
var (
	wsFrame    = recordingtest.WSFrame
	wsMessage  = recordingtest.WSMessage
	spdyFrames = recordingtest.SPDYFrames
	synStream  = recordingtest.SynStream
	data       = recordingtest.Data
	mask       = recordingtest.ClientMask
)

// events collects what a parser hands its sink, as text.
type events struct{ got []string }

func (e *events) output(b []byte) error { e.got = append(e.got, "o:"+string(b)); return nil }
func (e *events) input(b []byte) error  { e.got = append(e.got, "i:"+string(b)); return nil }
func (e *events) resize(w, h int) error {
	e.got = append(e.got, fmt.Sprintf("r:%dx%d", w, h))
	return nil
}

// merged joins consecutive events of one kind, so that results compare
// however the input was split.
func (e *events) merged() []string {
	var out []string
	for _, s := range e.got {
		if n := len(out); n > 0 && s[0] != 'r' && out[n-1][0] == s[0] {
			out[n-1] += s[2:]
			continue
		}
		out = append(out, s)
	}
	return out
}

func TestWebSocketParser(t *testing.T) {
	big := strings.Repeat("x", 70000)
	tests := []struct {
		name    string
		base64  bool
		stream  [][]byte
		want    []string
		wantErr string
	}{
		{name: "server output", stream: [][]byte{wsMessage(1, "hello\n", nil), wsMessage(2, "oops\n", nil), wsMessage(3, `{"status":"Success"}`, nil)},
			want: []string{"o:hello\noops\n"}},
		{name: "client stdin and resize, masked", stream: [][]byte{wsMessage(0, "ls\r", mask), wsMessage(4, `{"Width":120,"Height":40}`, mask)},
			want: []string{"i:ls\r", "r:120x40"}},
		{name: "16 and 64 bit lengths", stream: [][]byte{wsMessage(1, strings.Repeat("y", 300), nil), wsMessage(1, big, mask)},
			want: []string{"o:" + strings.Repeat("y", 300) + big}},
		{name: "fragments with a ping between", stream: [][]byte{
			wsFrame(false, 2, []byte("\x01ab"), mask), wsFrame(true, 9, []byte("ping"), mask),
			wsFrame(false, 0, []byte("cd"), mask), wsFrame(true, 0, []byte("ef"), mask)},
			want: []string{"o:abcdef"}},
		{name: "channel byte in a later fragment", stream: [][]byte{wsFrame(false, 2, nil, nil), wsFrame(true, 0, []byte("\x01z"), nil)},
			want: []string{"o:z"}},
		{name: "resize split over fragments", stream: [][]byte{wsFrame(false, 2, []byte("\x04{\"Width\":"), nil), wsFrame(true, 0, []byte(`9,"Height":7}`), nil)},
			want: []string{"r:9x7"}},
		{name: "v5 close channel and empty message", stream: [][]byte{wsMessage(255, "\x00", mask), wsFrame(true, 2, nil, mask), wsMessage(1, "k", nil)},
			want: []string{"o:k"}},
		{name: "base64", base64: true, stream: [][]byte{
			wsFrame(true, 1, []byte("1"+base64.StdEncoding.EncodeToString([]byte("héllo"))), nil),
			wsFrame(true, 1, []byte("4"+base64.StdEncoding.EncodeToString([]byte(`{"Width":1,"Height":2}`))), nil)},
			want: []string{"o:héllo", "r:1x2"}},
		{name: "reserved bits", stream: [][]byte{{0xc2, 0x00}}, wantErr: "reserved bits"},
		{name: "continuation without message", stream: [][]byte{wsFrame(true, 0, []byte("x"), nil)}, wantErr: "continuation"},
		{name: "message inside message", stream: [][]byte{wsFrame(false, 2, []byte("\x01a"), nil), wsFrame(true, 2, []byte("\x01b"), nil)}, wantErr: "new message"},
		{name: "long control frame", stream: [][]byte{wsFrame(true, 9, make([]byte, 126), nil)}, wantErr: "control frame"},
		{name: "unknown opcode", stream: [][]byte{wsFrame(true, 5, nil, nil)}, wantErr: "unknown data opcode"},
		{name: "bad resize", stream: [][]byte{wsMessage(4, "{", nil)}, wantErr: "resize message"},
		{name: "oversized resize", stream: [][]byte{wsMessage(4, strings.Repeat(" ", maxResizeMessage+1), nil)}, wantErr: "over 4096 bytes"},
		{name: "bad base64 channel", base64: true, stream: [][]byte{wsFrame(true, 1, []byte("x"), nil)}, wantErr: "not a digit"},
		{name: "bad base64", base64: true, stream: [][]byte{wsFrame(true, 1, []byte("1!!"), nil)}, wantErr: "not base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			all := bytes.Join(tt.stream, nil)
			// Whole, then byte by byte: the same events.
			for _, step := range []int{len(all), 1, 7} {
				var ev events
				p := newWSParser(&ev, tt.base64)
				var err error
				for i := 0; i < len(all) && err == nil; i += step {
					err = p.Write(all[i:min(i+step, len(all))])
				}
				if tt.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
						t.Fatalf("step %d: err = %v, want one containing %q", step, err, tt.wantErr)
					}
					if err2 := p.Write([]byte{0x82, 0}); err2 == nil {
						t.Fatalf("step %d: Write after an error succeeded", step)
					}
					continue
				}
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				if got := ev.merged(); fmt.Sprint(got) != fmt.Sprint(tt.want) {
					t.Fatalf("step %d: events %q, want %q", step, got, tt.want)
				}
			}
		})
	}
}

func TestSPDYParser(t *testing.T) {
	client := spdyFrames(t,
		synStream(1, "error"), synStream(3, "stdin"), synStream(5, "stdout"), synStream(7, "resize"),
		data(3, "whoami\r"), data(7, `{"Width":100,"Height":30}`+"\n"+`{"Width":90,`), data(7, `"Height":20}`+"\n"))
	pod := spdyFrames(t, &spdy.SynReplyFrame{StreamId: 5, Headers: http.Header{}}, data(5, "root\r\n"), data(1, `{"status":"Success"}`),
		&spdy.PingFrame{Id: 2}, data(5, "$ "))

	for _, step := range []int{1 << 20, 1, 5} {
		var cev, pev events
		streams := &spdyStreams{types: map[spdy.StreamId]string{}}
		cp, pp := newSPDYParser(&cev, streams), newSPDYParser(&pev, streams)
		feed := func(p *spdyParser, b []byte) {
			t.Helper()
			for i := 0; i < len(b); i += step {
				if err := p.Write(b[i:min(i+step, len(b))]); err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
			}
		}
		// The client's frames first: the streams it opens are known
		// when the pod's data arrives.
		feed(cp, client)
		feed(pp, pod)
		cp.Close()
		pp.Close()
		if got, want := fmt.Sprint(cev.merged()), fmt.Sprint([]string{"i:whoami\r", "r:100x30", "r:90x20"}); got != want {
			t.Errorf("step %d: client events %s, want %s", step, got, want)
		}
		if got, want := fmt.Sprint(pev.merged()), fmt.Sprint([]string{"o:root\r\n$ "}); got != want {
			t.Errorf("step %d: pod events %s, want %s", step, got, want)
		}
	}
}

func TestSPDYParserErrors(t *testing.T) {
	tests := []struct {
		name   string
		stream []byte
		want   string
	}{
		{"zero stream id", []byte{0, 0, 0, 0, 0, 0, 0, 1, 'x'}, "stream id zero"},
		{"unknown control frame", []byte{0x80, 3, 0, 99, 0, 0, 0, 0}, "control frame"},
		{"bad resize", spdyFrames(t, synStream(1, "resize"), data(1, "{\n")), "resize message"},
		{"control frame over the limit", []byte{0x80, 3, 0, 1, 0, 0x01, 0x00, 0x01}, "control frame of 65537 bytes is over the limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newSPDYParser(&events{}, &spdyStreams{types: map[spdy.StreamId]string{}})
			defer p.Close()
			var err error
			for i := 0; i < len(tt.stream) && err == nil; i++ {
				err = p.Write(tt.stream[i : i+1])
			}
			if err == nil {
				err = p.Write([]byte{0})
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}
