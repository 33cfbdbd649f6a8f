package recording

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/clustral/clustral/agent/recording/recordingtest"
)

// BenchmarkRecordOutput is the recorder's cost for bulk output: 32 KiB
// WebSocket messages of stdout from the pod, parsed and written as
// asciicast events to a file, per byte of output. Compare its MB/s with
// the exec throughput through the mesh (make bench,
// exec_throughput_mbps_*).
func BenchmarkRecordOutput(b *testing.B) {
	msg := recordingtest.WSMessage(chanStdout, strings.Repeat("x", 32<<10-1), nil)
	r, err := New(Options{Dir: b.TempDir(), MaxBytes: 1 << 40})
	if err != nil {
		b.Fatal(err)
	}
	s, err := r.Start(meta("bench", false), true)
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Begin("websocket", "v5.channel.k8s.io"); err != nil {
		b.Fatal(err)
	}
	c := s.Conn(&loop{msg: msg})
	buf := make([]byte, len(msg))
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	res := s.Close()
	b.ReportMetric(float64(res.Bytes)/float64(int64(b.N)*int64(len(msg)-1)), "recording_bytes/output_byte")
}

// loop is an upstream that sends msg for ever.
type loop struct {
	msg []byte
	r   bytes.Reader
}

func (l *loop) Read(p []byte) (int, error) {
	if l.r.Len() == 0 {
		l.r.Reset(l.msg)
	}
	return l.r.Read(p)
}
func (l *loop) Write(p []byte) (int, error) { return len(p), nil }
func (l *loop) Close() error                { return nil }
