package store

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// silentEtcd returns a store handle on an endpoint that accepts TCP
// connections but never answers, as an etcd that hangs does. The handle
// is built directly: OpenEtcd refuses an etcd that does not answer.
func silentEtcd(t *testing.T, timeout time.Duration) *Etcd {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c) // held open, never read
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	cfg := EtcdConfig{Endpoints: []string{"http://" + ln.Addr().String()}, Prefix: "/clustral-test", RequestTimeout: timeout}.withDefaults()
	cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Endpoints, DialTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Etcd{cfg: cfg, cli: cli, ctx: ctx, cancel: cancel}
	s.closing, s.endClosing = context.WithCancel(context.Background())
	t.Cleanup(func() { s.Close() })
	return s
}

// TestEtcdLeadSilentEtcd: an election on an etcd that never answers
// fails within the request timeout instead of waiting on the lease grant
// forever, and Lead returns once its context ends.
func TestEtcdLeadSilentEtcd(t *testing.T) {
	const timeout = 500 * time.Millisecond
	s := silentEtcd(t, timeout)
	errc := make(chan error, 1)
	go func() {
		errc <- s.leadOnce(t.Context(), "test", "a", func(context.Context) { t.Error("elected on an etcd that never answers") })
	}()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("leadOnce returned nil on an etcd that never answers")
		}
		t.Logf("leadOnce: %v", err)
	case <-time.After(20 * timeout):
		t.Fatalf("leadOnce still waiting %v after it began, with a request timeout of %v", 20*timeout, timeout)
	}

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- s.Lead(ctx, "test", "a", func(context.Context) { t.Error("elected on an etcd that never answers") })
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Lead returned %v, want %v", err, context.Canceled)
		}
	case <-time.After(20 * timeout):
		t.Fatalf("Lead still running %v after its context ended", 20*timeout)
	}
}
