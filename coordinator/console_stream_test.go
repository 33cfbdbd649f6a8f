package coordinator

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"testing"

	"github.com/clustral/clustral/pkg/testkit"
)

// TestConsoleStreamsEndAtShutdown: an open event stream of the web
// console ends when ListenAndServe stops, which then returns at once
// and without error; before, the stream held the HTTP server's Shutdown
// until its 10 s deadline.
func TestConsoleStreamsEndAtShutdown(t *testing.T) {
	e := newTestEnvWith(t, func(c *Config) { c.STUNListen = "off" })
	admin := e.login("admin@example.com")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- e.srv.ListenAndServe(ctx, func(a net.Addr) { ready <- a }) }()
	addr := testkit.Recv(t, ready, "the coordinator to listen")

	req, _ := http.NewRequest("GET", "http://"+addr.String()+"/approvals/events", nil)
	req.AddCookie(&http.Cookie{Name: "clustral_console", Value: admin.Token})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /approvals/events = %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() {
		t.Fatalf("the stream sent nothing: %v", sc.Err())
	}
	cancel()
	if err := testkit.Recv(t, done, "ListenAndServe to return"); err != nil {
		t.Errorf("ListenAndServe = %v, want nil: an open console stream held the shutdown", err)
	}
	for sc.Scan() {
	}
}
