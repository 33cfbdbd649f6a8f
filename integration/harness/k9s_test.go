package harness

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
)

// hangingServer serves a loopback port that accepts connections and never
// answers until t ends, and returns its address.
func hangingServer(t *testing.T) string {
	t.Helper()
	return testkit.ServeTCP(t, func(c net.Conn) { io.Copy(io.Discard, c) })
}

// hangingKubeconfig writes a kubeconfig whose server accepts connections
// and never answers, so k9s keeps running, waiting for it.
func hangingKubeconfig(t *testing.T) string {
	t.Helper()
	addr := hangingServer(t)
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://%s"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: hang, context: {cluster: c, user: u}}]
current-context: hang
`, addr)
	if err := os.WriteFile(kc, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return kc
}

// k9sPids returns the pids of k's tmux server and of k9s.
func k9sPids(k *K9s) []int { return []int{k.server.Pid(), k.panePid} }

// TestK9sStopLeavesNoProcess: Stop, as run by the test's cleanup, ends
// k9s and its tmux server.
func TestK9sStopLeavesNoProcess(t *testing.T) {
	k := StartK9s(t, K9sOptions{Kubeconfig: hangingKubeconfig(t), Context: "hang"})
	pids := k9sPids(k)
	if dead, how := k.Exited(); dead {
		t.Fatalf("k9s exited at once (%s):\n%s", how, k.Screen())
	}
	k.Stop()
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d still running after Stop", pid)
		}
	}
	k.Stop() // idempotent
}

// TestK9sCrashLeavesNoProcess starts k9s in a child test binary that then
// exits without running its cleanups, and checks that k9s and its tmux
// server die with it.
func TestK9sCrashLeavesNoProcess(t *testing.T) {
	if os.Getenv("HARNESS_K9S_CRASH") != "" {
		k := StartK9s(t, K9sOptions{Kubeconfig: hangingKubeconfig(t), Context: "hang"})
		if dead, how := k.Exited(); dead {
			fmt.Printf("k9s exited at once (%s)\n", how)
			os.Exit(3)
		}
		fmt.Printf("PIDS %d %d\n", k.server.Pid(), k.panePid)
		os.Exit(7)
	}
	if _, err := Binary("k9s"); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestK9sCrashLeavesNoProcess$", "-test.v")
	// The child exits without its cleanups, as a crash would: its
	// temporary directories go under one of ours, removed when we end.
	cmd.Env = append(os.Environ(), "HARNESS_K9S_CRASH=1", "TMPDIR="+t.TempDir())
	out, _ := cmd.CombinedOutput()
	var pids []int
	for _, line := range strings.Split(string(out), "\n") {
		if f, ok := strings.CutPrefix(line, "PIDS "); ok {
			for _, s := range strings.Fields(f) {
				if p, err := strconv.Atoi(s); err == nil {
					pids = append(pids, p)
				}
			}
		}
	}
	if len(pids) != 2 || slices.Contains(pids, 0) {
		t.Fatalf("child did not start k9s:\n%s", out)
	}
	err := Eventually(t.Context(), 10*time.Second, func(context.Context) error {
		for _, pid := range pids {
			if alive(pid) {
				return fmt.Errorf("process %d (of tmux server %d, k9s %d) still running after the test binary exited", pid, pids[0], pids[1])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestK9sCommandLine(t *testing.T) {
	tests := []struct {
		name string
		o    K9sOptions
		want []string
	}{
		{
			name: "read-only by default",
			o:    K9sOptions{},
			want: []string{"--logFile", "L", "--headless", "--logoless", "--splashless", "--readonly"},
		},
		{
			name: "everything",
			o:    K9sOptions{Kubeconfig: "kc", Context: "ctx", Namespace: "ns", Command: "pods", Write: true, Args: []string{"--refresh", "1"}},
			want: []string{"--logFile", "L", "--headless", "--logoless", "--splashless",
				"--kubeconfig", "kc", "--context", "ctx", "--namespace", "ns", "--command", "pods", "--refresh", "1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.o.commandLine("L"); !slices.Equal(got, tt.want) {
				t.Errorf("commandLine = %q, want %q", got, tt.want)
			}
		})
	}
}
