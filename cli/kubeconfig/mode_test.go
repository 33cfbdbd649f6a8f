package kubeconfig

import (
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"testing"
)

func TestKubeconfigWithCredentialIsOwnerOnly(t *testing.T) {
	proxy, _ := url.Parse("socks5://clustral:secret@127.0.0.1:1080")
	ctx := []Context{{Cluster: "prod", Server: "https://prod.clustral.internal", CA: []byte("ca"), Proxy: proxy}}
	tests := []struct {
		name    string
		mode    fs.FileMode // 0: no file yet
		ctxs    []Context
		wantWas fs.FileMode // 0: not tightened
		want    fs.FileMode
	}{
		{"world-readable file", 0o644, ctx, 0o644, 0o600},
		{"group-writable file", 0o660, ctx, 0o660, 0o600},
		{"already owner-only", 0o600, ctx, 0, 0o600},
		{"owner read-only stays", 0o400, ctx, 0, 0o400},
		{"new file", 0, ctx, 0, 0o600},
		{"only removing contexts", 0o644, nil, 0, 0o644},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config")
			if tt.mode != 0 {
				if err := os.WriteFile(path, []byte("apiVersion: v1\nkind: Config\n"), tt.mode); err != nil {
					t.Fatal(err)
				}
				os.Chmod(path, tt.mode) // past the umask
			}
			var was fs.FileMode
			k := Writer{Path: path, Tightened: func(f string, m fs.FileMode) {
				if f != path {
					t.Errorf("tightened %s, want %s", f, path)
				}
				was = m
			}}
			err := k.Set(tt.ctxs, []string{"clustral-gone"})
			if tt.mode == 0o400 {
				// clientcmd cannot write a read-only file; what matters
				// is that it was not loosened.
				err = nil
			}
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode().Perm(); got != tt.want {
				t.Errorf("mode = %04o, want %04o", got, tt.want)
			}
			if was != tt.wantWas {
				t.Errorf("reported previous mode %04o, want %04o", was, tt.wantWas)
			}
		})
	}
}
