//go:build !race

package netstack_test

// raceDetector reports whether the tests run under the race detector,
// which slows the stacks about tenfold.
const raceDetector = false
