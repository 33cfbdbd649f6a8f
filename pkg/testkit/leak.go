// Package testkit holds the helpers clustral's tests share: a goroutine-leak
// check and one way to wait for a condition. It is imported only by tests.
package testkit

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// LeakTimeout is how long a leak check waits for goroutines started during
// the checked span to return before it reports them. Shutdown paths that
// are waited for finish well within it; what is still running after it is
// a goroutine nothing owns.
const LeakTimeout = 5 * time.Second

// VerifyNoLeaks runs the package's tests and then fails the test binary if
// a goroutine started during them is still running after LeakTimeout,
// printing the stack of each. Use it from TestMain:
//
//	func TestMain(m *testing.M) { testkit.VerifyNoLeaks(m) }
//
// Goroutines running before the tests started (package init, the runtime)
// are not counted. It calls os.Exit.
func VerifyNoLeaks(m *testing.M) {
	before := goroutineIDs(stacks())
	code := m.Run()
	if code == 0 {
		if leaked := waitLeaks(before); len(leaked) > 0 {
			fmt.Fprintf(os.Stderr, "goroutine leak: %d goroutine(s) still running after the tests:\n\n%s\n",
				len(leaked), strings.Join(leaked, "\n\n"))
			code = 1
		}
	}
	os.Exit(code)
}

// CheckLeaks fails t if a goroutine started after the call is still running
// LeakTimeout after the test and its other cleanups have finished. Call it
// first in a test that must not run in parallel with others, so that its
// cleanup runs last.
func CheckLeaks(t testing.TB) {
	t.Helper()
	before := goroutineIDs(stacks())
	t.Cleanup(func() {
		if leaked := waitLeaks(before); len(leaked) > 0 {
			t.Errorf("goroutine leak: %d goroutine(s) still running after the test:\n\n%s",
				len(leaked), strings.Join(leaked, "\n\n"))
		}
	})
}

// waitLeaks polls until every goroutine not in before has returned, or
// LeakTimeout passes; it returns the stacks of those still running.
func waitLeaks(before map[uint64]bool) []string {
	deadline := time.Now().Add(LeakTimeout)
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		var leaked []string
		for _, g := range stacks() {
			id, ok := goroutineID(g)
			if !ok || before[id] || isCurrent(g) || ignored(g) {
				continue
			}
			leaked = append(leaked, g)
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return leaked
		}
		time.Sleep(wait)
	}
}

// stacks returns one entry per goroutine, each its header line and stack.
func stacks() []string {
	buf := make([]byte, 1<<16)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for g := range bytes.SplitSeq(buf, []byte("\n\n")) {
		if s := strings.TrimSpace(string(g)); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func goroutineIDs(gs []string) map[uint64]bool {
	ids := make(map[uint64]bool, len(gs))
	for _, g := range gs {
		if id, ok := goroutineID(g); ok {
			ids[id] = true
		}
	}
	return ids
}

// goroutineID parses the N of a stack's "goroutine N [state]:" header.
func goroutineID(g string) (uint64, bool) {
	rest, ok := strings.CutPrefix(g, "goroutine ")
	if !ok {
		return 0, false
	}
	num, _, ok := strings.Cut(rest, " ")
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseUint(num, 10, 64)
	return id, err == nil
}

// isCurrent reports whether g is the goroutine doing the check.
func isCurrent(g string) bool {
	return strings.Contains(g, "clustral/pkg/testkit.stacks(")
}

// ignored lists goroutines the Go runtime and the testing package start on
// their own; they are not the code under test's to stop.
func ignored(g string) bool {
	return slices.ContainsFunc([]string{
		"testing.(*T).Run(",       // a parent test waiting for its subtests
		"testing.(*M).",           // the test binary's own goroutine
		"testing.runFuzzTests(",   // fuzz engine
		"os/signal.signal_recv(",  // started by the first signal.Notify
		"runtime.ensureSigM(",     // likewise
		"runtime/trace.Start.",    // -trace
		"testing.(*M).startAlarm", // -timeout
	}, func(fn string) bool { return strings.Contains(g, fn) })
}
