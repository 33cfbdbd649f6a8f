package testkit

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// recorder is a testing.TB that records failures and cleanups instead of
// acting on them, so the helpers' own failures can be checked.
type recorder struct {
	testing.TB
	cleanups []func()
	failed   []string
}

func (r *recorder) Helper()                   {}
func (r *recorder) Cleanup(f func())          { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Errorf(f string, a ...any) { r.failed = append(r.failed, fmt.Sprintf(f, a...)) }

func (r *recorder) runCleanups() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func TestCheckLeaks(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(stop chan struct{})
		leak bool
	}{
		{"none", func(chan struct{}) {}, false},
		{"stopped before the test ends", func(stop chan struct{}) {
			done := make(chan struct{})
			go func() { <-stop; close(done) }()
			close(stop)
			<-done
		}, false},
		{"returns shortly after the test", func(chan struct{}) {
			go time.Sleep(50 * time.Millisecond)
		}, false},
		{"never stopped", func(stop chan struct{}) {
			go func() { <-stop }()
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{TB: t}
			stop := make(chan struct{})
			CheckLeaks(r)
			tc.run(stop)
			if tc.leak {
				// Close stop only after the check has reported, so
				// the goroutine is still running while it looks.
				defer close(stop)
			}
			r.runCleanups()
			if got := len(r.failed) > 0; got != tc.leak {
				t.Fatalf("leak reported = %v, want %v: %q", got, tc.leak, r.failed)
			}
			if tc.leak && !strings.Contains(r.failed[0], "testkit.TestCheckLeaks") {
				t.Errorf("report does not show the leaked goroutine's stack:\n%s", r.failed[0])
			}
		})
	}
}
