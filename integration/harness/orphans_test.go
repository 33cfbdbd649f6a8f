package harness

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

func TestReapOrphans(t *testing.T) {
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	start := func(owner int) *exec.Cmd {
		t.Helper()
		c := exec.Command("sleep", "300")
		c.Env = append(os.Environ(), OwnerEnv+"="+strconv.Itoa(owner))
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill() })
		return c
	}
	orphan := start(gone.Process.Pid)
	ours := start(os.Getpid())

	if _, err := ReapOrphans(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- orphan.Wait() }()
	select {
	case err := <-waited:
		if ws, ok := orphan.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Errorf("orphan of a gone test binary: wait = %v, want killed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the orphan of a gone test binary still runs")
	}
	if !alive(ours.Process.Pid) {
		t.Error("a process of this test binary was killed")
	}
}
