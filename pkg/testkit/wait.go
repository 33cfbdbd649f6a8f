package testkit

import (
	"sync"
	"testing"
	"time"
)

// WaitTimeout is how long WaitFor and Recv wait before they fail the test.
// It is long because the race detector and a busy machine slow everything;
// a passing test never waits for it.
const WaitTimeout = 10 * time.Second

// WaitFor polls cond until it returns true and fails t, naming what it
// waited for, if that takes longer than WaitTimeout. cond runs on the
// calling goroutine; it may take locks and may call t.Fatal, but must not
// block.
//
// Inside a testing/synctest bubble the polling sleeps advance the fake
// clock, so a condition that time alone makes true is reached at once.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	WaitForWithin(t, WaitTimeout, what, cond)
}

// WaitForWithin is WaitFor with a timeout other than WaitTimeout, for
// conditions that take long by design (a process restart, a large
// workload).
func WaitForWithin(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for wait := time.Millisecond; !cond(); wait = min(2*wait, 20*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(wait)
	}
}

// Recv returns the next value from ch, or the zero value once ch is closed,
// and fails t, naming what it waited for, if neither happens within
// WaitTimeout.
func Recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	return RecvWithin(t, WaitTimeout, ch, what)
}

// RecvWithin is Recv with a timeout other than WaitTimeout, for what
// takes long by design (a shutdown that drains).
func RecvWithin[T any](t testing.TB, timeout time.Duration, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
	panic("unreachable")
}

// Repeat calls step with 0, 1, 2 and on, on a goroutine of its own, until
// step returns false or stop is called, as a load that runs while a test
// does something else. stop ends the repetition, waits for the call under
// way to return and may be called again; tb's cleanup calls it too.
func Repeat(tb testing.TB, step func(i int) bool) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			if !step(i) {
				return
			}
		}
	})
	stop = sync.OnceFunc(func() {
		close(done)
		wg.Wait()
	})
	tb.Cleanup(stop)
	return stop
}
