package deploy

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/pkg/testkit"
)

// TestCoordinatorReloadOnSIGHUP is `systemctl reload` of the unit
// (ExecReload sends SIGHUP) against the real binary: a renewed
// certificate is served to new connections, an open connection goes on,
// and a broken pair leaves the served certificate as it was.
func TestCoordinatorReloadOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	install := func(cert, key []byte) {
		t.Helper()
		// As a renewal does: write new files and rename them into place.
		for path, b := range map[string][]byte{certFile: cert, keyFile: key} {
			if err := os.WriteFile(path+".new", b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(path+".new", path); err != nil {
				t.Fatal(err)
			}
		}
	}
	oldCert, oldKey := testkit.ServerCert(t, "old")
	newCert, newKey := testkit.ServerCert(t, "new")
	install(oldCert, oldKey)

	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p, err := harness.StartProcess("coordinator", clustral(t), []string{"coordinator",
		"--listen", addr, "--data-dir", filepath.Join(dir, "data"), "--stun-listen", "0",
		"--tls-cert", certFile, "--tls-key", keyFile, "--log-format", "text"}, cleanEnv(), filepath.Join(dir, "coordinator.log"))
	if err != nil {
		t.Fatal(err)
	}
	p.StopAtEnd(t, 30)
	url := "https://" + addr + "/healthz"
	if err := p.WaitHTTPClient(t.Context(), testkit.OneConnClient(), url); err != nil {
		t.Fatal(err)
	}
	open := testkit.OneConnClient()
	defer open.CloseIdleConnections()
	if cn, err := testkit.ServedCN(open, url); err != nil || cn != "old" {
		t.Fatalf("before reload: %q, %v", cn, err)
	}
	hup := func() {
		t.Helper()
		if err := syscall.Kill(p.Pid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	// waitLog waits for a log line containing s, past the first skip bytes.
	waitLog := func(s string, skip int) int {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			b, _ := os.ReadFile(p.LogPath())
			if i := strings.Index(string(b[min(skip, len(b)):]), s); i >= 0 {
				return skip + i + len(s)
			}
			if time.Now().After(deadline) || p.Exited() {
				t.Fatalf("no log line %q within 5s (exited: %v)", s, p.Exited())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	install(newCert, newKey)
	hup()
	at := waitLog("TLS certificate reloaded", 0)
	if cn, err := testkit.ServedCN(testkit.OneConnClient(), url); err != nil || cn != "new" {
		t.Errorf("a new connection after reload gets %q, %v; want new", cn, err)
	}
	for range 3 {
		if cn, err := testkit.ServedCN(open, url); err != nil || cn != "old" {
			t.Fatalf("the connection opened before the reload: %q, %v; want it kept, on the old certificate", cn, err)
		}
	}

	// A key that does not match: refused, the new certificate stays.
	install(oldCert, newKey)
	hup()
	waitLog("TLS certificate not reloaded", at)
	if cn, err := testkit.ServedCN(testkit.OneConnClient(), url); err != nil || cn != "new" {
		t.Errorf("after a refused reload a new connection gets %q, %v; want new", cn, err)
	}
	if p.Exited() {
		t.Fatal("the coordinator exited on SIGHUP")
	}
}
