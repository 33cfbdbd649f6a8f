// Package store runs the store conformance suite against real etcd: one
// member, and a three-member cluster on loopback.
package store

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/coordinator/store/storetest"
	"github.com/clustral/clustral/integration/harness"
)

// openOn returns an opener of stores on endpoints, each under its own
// key prefix so the subtests start empty.
func openOn(endpoints []string) func(t *testing.T) store.Store {
	var n atomic.Int64
	return func(t *testing.T) store.Store {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := store.OpenEtcd(ctx, store.EtcdConfig{
			Endpoints: endpoints,
			Prefix:    fmt.Sprintf("/clustral-test/%d", n.Add(1)),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

func TestEtcdConformance(t *testing.T) {
	e, err := harness.StartEtcd(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	storetest.Run(t, openOn([]string{e.URL}))
}

func TestEtcdClusterConformance(t *testing.T) {
	c, err := harness.StartEtcdCluster(t.Context(), t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	storetest.Run(t, openOn(c.URLs))
}

// TestEtcdOpenErrors: a store that cannot reach etcd, or is configured
// wrongly, says which setting to fix.
func TestEtcdOpenErrors(t *testing.T) {
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	missing := t.TempDir() + "/missing.pem"
	tests := []struct {
		name string
		cfg  store.EtcdConfig
		want string
	}{
		{"no endpoint", store.EtcdConfig{}, "--etcd-endpoints"},
		{"not a URL", store.EtcdConfig{Endpoints: []string{"etcd:2379"}}, "scheme://host:port"},
		{"no port", store.EtcdConfig{Endpoints: []string{"https://etcd"}}, "scheme://host:port"},
		{"mixed schemes", store.EtcdConfig{Endpoints: []string{"https://127.0.0.1:2379", "http://127.0.0.1:2380"}}, "different schemes"},
		{"cert without key", store.EtcdConfig{Endpoints: []string{"https://127.0.0.1:2379"}, CertFile: missing}, "--etcd-key"},
		{"missing CA", store.EtcdConfig{Endpoints: []string{"https://127.0.0.1:2379"}, CAFile: missing}, "--etcd-ca"},
		{"TLS on http", store.EtcdConfig{Endpoints: []string{"http://127.0.0.1:2379"}, CAFile: missing}, "https://"},
		{"bad prefix", store.EtcdConfig{Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "clustral/"}, "must start with /"},
		{"unreachable", store.EtcdConfig{Endpoints: []string{fmt.Sprintf("http://127.0.0.1:%d", port)}, DialTimeout: time.Second}, "check --etcd-endpoints"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := store.OpenEtcd(t.Context(), tt.cfg)
			if err == nil {
				s.Close()
				t.Fatal("OpenEtcd succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

// TestEtcdTLS: the store reaches an etcd that serves HTTPS and requires
// client certificates with --etcd-cert, --etcd-key and --etcd-ca, passes
// the suite there, and is refused without its certificate or with
// another CA.
func TestEtcdTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := harness.NewCA("etcd-ca")
	if err != nil {
		t.Fatal(err)
	}
	e, files, err := harness.StartEtcdTLS(t.Context(), dir, ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if !strings.HasPrefix(e.URL, "https://") {
		t.Fatalf("etcd URL %s is not https", e.URL)
	}
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T) store.Store {
		t.Helper()
		s, err := store.OpenEtcd(t.Context(), store.EtcdConfig{
			Endpoints: []string{e.URL},
			CertFile:  files.ClientCertFile, KeyFile: files.ClientKeyFile, CAFile: files.CAFile,
			Prefix: fmt.Sprintf("/clustral-tls/%d", n.Add(1)),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})

	other, err := harness.NewCA("other-ca")
	if err != nil {
		t.Fatal(err)
	}
	otherCA := dir + "/other-ca.pem"
	if err := os.WriteFile(otherCA, other.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		cfg  store.EtcdConfig
	}{
		{"no client certificate", store.EtcdConfig{CAFile: files.CAFile}},
		{"another CA", store.EtcdConfig{CertFile: files.ClientCertFile, KeyFile: files.ClientKeyFile, CAFile: otherCA}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Endpoints, tt.cfg.DialTimeout = []string{e.URL}, 2*time.Second
			s, err := store.OpenEtcd(t.Context(), tt.cfg)
			if err == nil {
				s.Close()
				t.Fatal("OpenEtcd succeeded")
			}
			if !strings.Contains(err.Error(), "TLS settings") {
				t.Fatalf("err = %v, want it to point at the TLS settings", err)
			}
		})
	}
}
