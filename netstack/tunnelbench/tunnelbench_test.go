package tunnelbench

import (
	"context"
	"testing"
	"time"
)

func TestMeasureTunnel(t *testing.T) {
	for _, which := range []string{Ours, Stock, Loopback} {
		t.Run(which, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			const n = 8 << 20
			r, err := MeasureTunnel(ctx, which, n)
			if err != nil {
				t.Fatal(err)
			}
			if r.Bytes != n || r.Duration <= 0 {
				t.Fatalf("result %+v, want %d bytes in positive time", r, n)
			}
			t.Logf("%s: %.1f MB/s, %.2f CPU s/GiB", which, r.MBPerSec(), r.CPUSecondsPerGiB())
		})
	}
}

// BenchmarkTunnelThroughput moves data over one TCP connection through
// each setup. Compare /ours with /stock; /loopback is the ceiling.
func BenchmarkTunnelThroughput(b *testing.B) {
	const chunk = 4 << 20
	for _, which := range []string{Ours, Stock, Loopback} {
		b.Run(which, func(b *testing.B) {
			s, err := NewSetup(which)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			if _, err := Transfer(ctx, s, 1<<20); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(chunk)
			b.ResetTimer()
			if _, err := Transfer(ctx, s, int64(b.N)*chunk); err != nil {
				b.Fatal(err)
			}
		})
	}
}
