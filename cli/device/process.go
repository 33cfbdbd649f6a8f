package device

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Alive reports whether process pid runs: it exists and, where /proc
// says so, is not a zombie. A killed `clustral up` stays a zombie until
// its reaper collects it, which in a container whose init does not reap
// may take long; it runs no more, so nothing of it is alive.
func Alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true // no /proc here (macOS), or it just went
	}
	// The state is the field after the parenthesized command name.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return true
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}
