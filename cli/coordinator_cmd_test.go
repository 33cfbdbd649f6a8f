package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCoordinatorStoreSettings: the store settings come from flags, the
// environment and the config file like every other, and a bad one is
// refused before anything starts, naming the fix.
func TestCoordinatorStoreSettings(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "coordinator.yaml")
	if err := os.WriteFile(file, []byte("store: etcd\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"flag: unknown backend", []string{"--store", "sqlite"}, nil, `store "sqlite": use --store bolt`},
		{"file: etcd without endpoints", []string{"--config", file}, nil, "needs at least one endpoint: set --etcd-endpoints"},
		{"env: endpoint not a URL", nil, map[string]string{"CLUSTRAL_STORE": "etcd", "CLUSTRAL_ETCD_ENDPOINTS": "https://etcd-0:2379,etcd-1:2379"}, `etcd endpoint "etcd-1:2379" is not a client URL`},
		{"env: cert without key", nil, map[string]string{"CLUSTRAL_STORE": "etcd", "CLUSTRAL_ETCD_ENDPOINTS": "https://etcd-0:2379", "CLUSTRAL_ETCD_CERT": "c.pem"}, "needs both --etcd-cert and --etcd-key"},
		{"flag: endpoints with bolt", []string{"--etcd-endpoints", "https://etcd-0:2379"}, nil, "set --store etcd"},
		{"flag: bad prefix", []string{"--store", "etcd", "--etcd-endpoints", "http://127.0.0.1:2379", "--etcd-prefix", "clustral"}, nil, "must start with /"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			args := append([]string{"coordinator", "--data-dir", filepath.Join(t.TempDir(), "data")}, tt.args...)
			code, _, errb := runCLI(t, args...)
			if code == 0 || !strings.Contains(errb, tt.want) {
				t.Fatalf("exit %d, stderr %q; want a failure mentioning %q", code, errb, tt.want)
			}
		})
	}
}

// TestCoordinatorRestoreSettings: restore refuses what it cannot use
// before it connects anywhere, naming the fix.
func TestCoordinatorRestoreSettings(t *testing.T) {
	backup := filepath.Join(t.TempDir(), "backup.db")
	if err := os.WriteFile(backup, []byte("not checked before the settings"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no backup file", []string{"restore", "--etcd-endpoints", "https://etcd-0:2379", filepath.Join(t.TempDir(), "missing.db")}, nil, "backup file:"},
		{"no endpoints", []string{"restore", backup}, nil, "set --etcd-endpoints (with the bbolt store, install the file as coordinator.db instead)"},
		{"env: endpoint not a URL", []string{"restore", backup}, map[string]string{"CLUSTRAL_ETCD_ENDPOINTS": "etcd-0:2379"}, "is not a client URL"},
		{"key without cert", []string{"restore", "--etcd-endpoints", "https://etcd-0:2379", "--etcd-key", "k.pem", backup}, nil, "needs both --etcd-cert and --etcd-key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			code, _, errb := runCLI(t, append([]string{"coordinator"}, tt.args...)...)
			if code != exitUsage || !strings.Contains(errb, tt.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d mentioning %q", code, errb, exitUsage, tt.want)
			}
		})
	}
}
