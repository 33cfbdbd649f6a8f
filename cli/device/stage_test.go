package device

import (
	"crypto/sha256"
	"log/slog"
	"testing"
)

// TestStageRecordsCPU: each stage carries the process's CPU time so far,
// which only grows.
func TestStageRecordsCPU(t *testing.T) {
	d := &device{log: slog.New(slog.DiscardHandler)}
	d.stage(StageStart)
	b := make([]byte, 1<<20)
	for range 50 { // some CPU between the stages
		sum := sha256.Sum256(b)
		b[0] = sum[0]
	}
	d.stage(StageRegistered)
	first, second := d.stages[0].CPU, d.stages[1].CPU
	if first <= 0 || second < first {
		t.Fatalf("stage CPU times %v then %v; want positive and not falling", first, second)
	}
}
