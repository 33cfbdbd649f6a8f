package cli

import (
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
)

// TestReadySignal: the background process writes one byte on the
// descriptor upReadyEnv names and closes it; a value that is not a
// descriptor it may own is an error naming the variable.
func TestReadySignal(t *testing.T) {
	t.Run("signals once and closes", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		fd, err := syscall.Dup(int(w.Fd()))
		w.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv(upReadyEnv, strconv.Itoa(fd))
		signal, err := readySignal()
		if err != nil || signal == nil {
			t.Fatalf("readySignal() = %v, %v", signal != nil, err)
		}
		if v, ok := os.LookupEnv(upReadyEnv); ok {
			t.Errorf("%s still set to %q: programs the device runs would inherit it", upReadyEnv, v)
		}
		signal()
		b, err := io.ReadAll(r) // EOF only once the descriptor is closed
		if err != nil || string(b) != "\x01" {
			t.Fatalf("read %q, %v; want one byte, then EOF", b, err)
		}
	})
	t.Run("foreground", func(t *testing.T) {
		t.Setenv(upReadyEnv, "")
		if signal, err := readySignal(); signal != nil || err != nil {
			t.Fatalf("readySignal() = %v, %v; want nil, nil", signal != nil, err)
		}
	})
	for _, v := range []string{"x", "1", "-4"} {
		t.Run("bad "+v, func(t *testing.T) {
			t.Setenv(upReadyEnv, v)
			_, err := readySignal()
			if err == nil || !strings.Contains(err.Error(), upReadyEnv) {
				t.Fatalf("readySignal() with %s=%s: %v; want an error naming it", upReadyEnv, v, err)
			}
		})
	}
}

// TestHoldGC: the collector is off, under a memory limit, until release
// (at once) or the hold's end, and then has its settings back.
func TestHoldGC(t *testing.T) {
	gcSettings := func() (percent int, limit int64) {
		percent = debug.SetGCPercent(-1)
		debug.SetGCPercent(percent)
		return percent, debug.SetMemoryLimit(-1)
	}
	wantPercent, wantLimit := gcSettings()
	restored := func() bool {
		p, l := gcSettings()
		return p == wantPercent && l == wantLimit
	}
	held := func(t *testing.T) {
		t.Helper()
		if p, l := gcSettings(); p != -1 || l > startupHeapLimit {
			t.Fatalf("while held: GC percent %d, memory limit %d; want -1 and at most %d", p, l, startupHeapLimit)
		}
	}
	t.Run("released", func(t *testing.T) {
		release := holdGC(time.Hour)
		t.Cleanup(release)
		held(t)
		release()
		release()
		if !restored() {
			t.Fatal("settings not restored by release")
		}
	})
	t.Run("hold passed", func(t *testing.T) {
		release := holdGC(time.Millisecond)
		t.Cleanup(release)
		testkit.WaitFor(t, "the GC settings restored after the hold", restored)
		release() // later, as Run's end does
		if !restored() {
			t.Fatal("settings changed by a late release")
		}
	})
}
