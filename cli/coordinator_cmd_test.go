package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCoordinatorBadSettings: the store settings come from flags, the
// environment and the config file like every other, and a bad one is
// refused before anything starts, naming the fix; restore likewise
// refuses what it cannot use before it connects anywhere.
func TestCoordinatorBadSettings(t *testing.T) {
	dir := t.TempDir()
	file, backup, data := filepath.Join(dir, "coordinator.yaml"), filepath.Join(dir, "backup.db"), filepath.Join(dir, "data")
	if err := os.WriteFile(file, []byte("store: etcd\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(backup, []byte("not checked before the settings"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string // after "clustral coordinator"
		env  map[string]string
		code int
		want string
	}{
		{"flag: unknown backend", []string{"--data-dir", data, "--store", "sqlite"}, nil, exitError, `store "sqlite": use --store bolt`},
		{"file: etcd without endpoints", []string{"--data-dir", data, "--config", file}, nil, exitError, "needs at least one endpoint: set --etcd-endpoints"},
		{"env: endpoint not a URL", []string{"--data-dir", data}, map[string]string{"CLUSTRAL_STORE": "etcd", "CLUSTRAL_ETCD_ENDPOINTS": "https://etcd-0:2379,etcd-1:2379"}, exitError, `etcd endpoint "etcd-1:2379" is not a client URL`},
		{"env: cert without key", []string{"--data-dir", data}, map[string]string{"CLUSTRAL_STORE": "etcd", "CLUSTRAL_ETCD_ENDPOINTS": "https://etcd-0:2379", "CLUSTRAL_ETCD_CERT": "c.pem"}, exitError, "needs both --etcd-cert and --etcd-key"},
		{"flag: endpoints with bolt", []string{"--data-dir", data, "--etcd-endpoints", "https://etcd-0:2379"}, nil, exitError, "set --store etcd"},
		{"flag: bad prefix", []string{"--data-dir", data, "--store", "etcd", "--etcd-endpoints", "http://127.0.0.1:2379", "--etcd-prefix", "clustral"}, nil, exitError, "must start with /"},

		{"restore: no backup file", []string{"restore", "--etcd-endpoints", "https://etcd-0:2379", filepath.Join(dir, "missing.db")}, nil, exitUsage, "backup file:"},
		{"restore: no endpoints", []string{"restore", backup}, nil, exitUsage, "set --etcd-endpoints (with the bbolt store, install the file as coordinator.db instead)"},
		{"restore: env: endpoint not a URL", []string{"restore", backup}, map[string]string{"CLUSTRAL_ETCD_ENDPOINTS": "etcd-0:2379"}, exitUsage, "is not a client URL"},
		{"restore: key without cert", []string{"restore", "--etcd-endpoints", "https://etcd-0:2379", "--etcd-key", "k.pem", backup}, nil, exitUsage, "needs both --etcd-cert and --etcd-key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			code, _, errb := runCLI(t, append([]string{"coordinator"}, tt.args...)...)
			if code != tt.code || !strings.Contains(errb, tt.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d mentioning %q", code, errb, tt.code, tt.want)
			}
		})
	}
}
