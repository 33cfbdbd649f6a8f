package cli

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/clustral/clustral/pkg/testkit"
)

func TestCheckPprofAddr(t *testing.T) {
	tests := []struct {
		addr    string
		wantErr string
	}{
		{"127.0.0.1:6060", ""},
		{"[::1]:0", ""},
		{"localhost:6060", "loopback address only"},
		{"0.0.0.0:6060", "loopback address only"},
		{":6060", "loopback address only"},
		{"10.0.0.1:6060", "loopback address only"},
		{"example.com:6060", "loopback address only"},
		{"127.0.0.1", "want a loopback host:port"},
	}
	for _, tt := range tests {
		err := checkPprofAddr(tt.addr)
		_, usage := err.(usageError)
		ok := err == nil
		if tt.wantErr != "" {
			ok = usage && strings.Contains(err.Error(), tt.wantErr)
		}
		if !ok {
			t.Errorf("checkPprofAddr(%q) = %v; want a usage error with %q (none if empty)", tt.addr, err, tt.wantErr)
		}
	}
}

func TestServePprof(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := servePprof(ctx, addr, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(b) == 0 {
		t.Fatalf("GET cmdline: %s, %q", resp.Status, b)
	}
	cancel()
	// Closed with ctx: nothing answers there any more.
	testkit.WaitFor(t, "the pprof server to close", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
}
