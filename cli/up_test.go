package cli

import (
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
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

func TestLimitProcs(t *testing.T) {
	prev := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	tests := []struct {
		name, env string
		start     int
		want      int
	}{
		{"unset: one P", "", 4, upProcs},
		{"set: left alone", "3", 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runtime.GOMAXPROCS(tt.start)
			got := limitProcs(func(k string) string {
				if k != "GOMAXPROCS" {
					t.Errorf("getenv(%q); want only GOMAXPROCS", k)
				}
				return tt.env
			})
			if got != tt.want || runtime.GOMAXPROCS(0) != tt.want {
				t.Fatalf("limitProcs with GOMAXPROCS=%q = %d (runtime %d); want %d", tt.env, got, runtime.GOMAXPROCS(0), tt.want)
			}
		})
	}
}
