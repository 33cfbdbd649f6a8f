package harness

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// OwnerEnv names the environment variable that marks a process started for
// a test binary: its value is the test binary's pid. Users' clustral runs
// carry it, and so does the `clustral up` daemon they leave behind, which
// detaches from its parent and so outlives a test binary that is killed
// before its cleanup runs `clustral down` (a -timeout panic, a kill by
// hand).
const OwnerEnv = "CLUSTRAL_IT_OWNER"

// ownerEntry is the OwnerEnv entry of this test binary's processes.
var ownerEntry = OwnerEnv + "=" + strconv.Itoa(os.Getpid())

// ReapOrphans kills the processes that carry OwnerEnv of a test binary that
// is no longer running, and returns how many it killed. Main calls it
// before starting the components, so a crashed run's daemons do not live
// on into the next.
func ReapOrphans() (int, error) {
	procs, err := filepath.Glob("/proc/[0-9]*/environ")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, f := range procs {
		env, err := os.ReadFile(f)
		if err != nil {
			continue // gone, or not ours to read
		}
		owner, ok := ownerOf(env)
		if !ok || alive(owner) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return n, fmt.Errorf("kill orphan %d of test binary %d: %w", pid, owner, err)
		}
		n++
	}
	return n, nil
}

// ownerOf returns the pid in the OwnerEnv entry of env, a NUL-separated
// environment as /proc/<pid>/environ holds it.
func ownerOf(env []byte) (int, bool) {
	prefix := []byte(OwnerEnv + "=")
	for kv := range bytes.SplitSeq(env, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, prefix); ok {
			pid, err := strconv.Atoi(string(v))
			return pid, err == nil && pid > 0
		}
	}
	return 0, false
}

// alive reports whether pid exists and is not a zombie (an orphan killed
// by Pdeathsig is reaped by init, which may be slow or absent).
func alive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// The state follows the parenthesized command name.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || (s[i+2] != 'Z' && s[i+2] != 'X')
}
