package cli

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"runtime"
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

// TestBackgroundError: a background process that exits before it is
// connected fails clustral up with the error and hint it printed last
// and its exit code; without an error line, with its last log line and
// a hint naming the log.
func TestBackgroundError(t *testing.T) {
	exit := func(code int) error {
		err := exec.Command("sh", "-c", "exit "+strconv.Itoa(code)).Run()
		if err == nil {
			t.Fatal("sh exited 0")
		}
		return err
	}
	const logFile = "/profile/up.log"
	tests := []struct {
		name     string
		exited   error
		log      string
		wantErr  string
		wantHint string
		wantCode int
	}{
		{"error and hint", exit(5), "time=x level=WARN msg=\"list requestable clusters\"\nerror: reach coordinator https://c: connection refused\nhint: check the URL and your network, or run: clustral doctor\n",
			"reach coordinator https://c: connection refused", "check the URL and your network, or run: clustral doctor", exitUnreach},
		{"error without hint", exit(1), "error: read CA file: open /ca.pem: no such file or directory\n",
			"read CA file: open /ca.pem: no such file or directory", "see " + logFile, exitError},
		{"a later error replaces an earlier one and its hint", exit(3), "error: first\nhint: for the first\nerror: your session has expired\n",
			"your session has expired", "see " + logFile, exitAuth},
		{"a crash", exit(2), "panic: boom\n\ngoroutine 1 [running]:\nmain.main()\n",
			"clustral up's background process exited (exit status 2): main.main()", "see " + logFile, exitUsage},
		{"no output", exit(1), "", "clustral up's background process exited (exit status 1): no output", "see " + logFile, exitError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := backgroundError(tt.exited, []byte(tt.log), logFile)
			var he *hintError
			if !errors.As(err, &he) {
				t.Fatalf("backgroundError = %v, want a *hintError", err)
			}
			if he.Error() != tt.wantErr || he.hint != tt.wantHint || he.code != tt.wantCode {
				t.Errorf("backgroundError = %q, hint %q, code %d; want %q, hint %q, code %d", he.Error(), he.hint, he.code, tt.wantErr, tt.wantHint, tt.wantCode)
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
