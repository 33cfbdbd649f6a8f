package capool

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clustral/clustral/pkg/testkit"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	certPEM, _ := testkit.ServerCert(t, "ca")
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, file string
		want       string // an error containing this; "" means a pool
	}{
		{"a PEM certificate", write("ca.pem", certPEM), ""},
		{"no such file", filepath.Join(dir, "missing.pem"), "read CA file: "},
		{"no certificate", write("empty.pem", []byte("not PEM\n")), "holds no PEM certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool, err := Load(tt.file, "CA file")
			switch {
			case tt.want == "" && (err != nil || pool == nil):
				t.Fatalf("Load = %v, %v; want a pool", pool, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Load error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}
