package testkit

import (
	"syscall"
	"time"
)

// CPUTime returns the user and system CPU time this process has used, or
// 0 if the system does not say. Benchmarks take differences of it.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
