package kubeconfig

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkSet writes the contexts of a device reaching n clusters into a
// kubeconfig that already holds the user's own cluster, as clustral up
// does when it connects, and removes them again.
func BenchmarkSet(b *testing.B) {
	for _, n := range []int{1, 10} {
		b.Run(fmt.Sprintf("clusters=%d", n), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "config")
			existing := "apiVersion: v1\nkind: Config\nclusters:\n- name: mine\n  cluster:\n    server: https://mine.example.com\ncontexts:\n- name: mine\n  context:\n    cluster: mine\n    user: me\ncurrent-context: mine\nusers:\n- name: me\n  user:\n    token: secret-token\n"
			if err := os.WriteFile(path, []byte(existing), 0o600); err != nil {
				b.Fatal(err)
			}
			k := Writer{Path: path}
			proxy, _ := url.Parse("socks5://clustral:secret@127.0.0.1:1080")
			ca := bytes.Repeat([]byte("-----BEGIN CERTIFICATE-----\n"), 40) // about a CA bundle's size
			var ctxs []Context
			var names []string
			for i := range n {
				cl := fmt.Sprintf("cluster%d", i)
				ctxs = append(ctxs, Context{Cluster: cl, Server: "https://" + cl + ".clustral.internal", CA: ca, Proxy: proxy, Login: "alice@example.com"})
				names = append(names, ContextName(cl))
			}
			for b.Loop() {
				if err := k.Set(ctxs, nil); err != nil {
					b.Fatal(err)
				}
				if err := k.Set(nil, names); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
