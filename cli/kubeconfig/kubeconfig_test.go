package kubeconfig

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

func TestKubeconfigPreservesAndRemoves(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	existing := `apiVersion: v1
kind: Config
clusters:
- name: mine
  cluster:
    server: https://mine.example.com
contexts:
- name: mine
  context:
    cluster: mine
    user: me
- name: clustral-prod
  context:
    cluster: mine
current-context: mine
users:
- name: me
  user:
    token: secret-token
`
	if err := os.WriteFile(path, []byte(existing), 0o600); err != nil {
		t.Fatal(err)
	}
	k := Writer{Path: path}
	proxy, _ := url.Parse("socks5://u:p@127.0.0.1:1080")
	// A context of ours by name, but not written by us, is not overwritten.
	err := k.Set([]Context{{Cluster: "prod", Server: "https://prod.clustral.internal", CA: []byte("ca"), Proxy: proxy}}, nil)
	if err == nil || !strings.Contains(err.Error(), "did not write") {
		t.Fatalf("Set over a foreign context = %v", err)
	}
	if err := k.Set([]Context{{Cluster: "staging", Server: "https://staging.clustral.internal", CA: []byte("ca"), Proxy: proxy, Login: "alice@example.com"}}, nil); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Clusters["clustral-staging"]
	if c == nil || c.Server != "https://staging.clustral.internal" || c.ProxyURL != proxy.String() || string(c.CertificateAuthorityData) != "ca" {
		t.Fatalf("written cluster = %+v", c)
	}
	ctx := cfg.Contexts["clustral-staging"]
	if ctx == nil {
		t.Fatal("no context written")
	}
	if ai := cfg.AuthInfos[ctx.AuthInfo]; ai == nil || ai.Token != "" || ai.Password != "" || ai.ClientKeyData != nil || ai.Exec != nil || ai.Username != "alice@example.com" {
		t.Fatalf("user entry = %+v, want only the login and no credential", ai)
	}
	if cfg.CurrentContext != "mine" || cfg.AuthInfos["me"].Token != "secret-token" || cfg.Contexts["clustral-prod"] == nil {
		t.Fatal("existing content not preserved")
	}
	ours, _ := k.Ours()
	if len(ours) != 1 || ours[0] != "clustral-staging" {
		t.Fatalf("Ours = %v", ours)
	}
	if err := k.Set(nil, []string{"clustral-staging", "clustral-prod", "mine"}); err != nil {
		t.Fatal(err)
	}
	cfg, _ = clientcmd.LoadFromFile(path)
	if cfg.Contexts["clustral-staging"] != nil || cfg.Clusters["clustral-staging"] != nil || cfg.AuthInfos["clustral-staging"] != nil {
		t.Fatal("our context not removed")
	}
	if cfg.Contexts["mine"] == nil || cfg.Contexts["clustral-prod"] == nil {
		t.Fatal("removed a context clustral did not write")
	}
}

// TestSetAcrossFiles: with KUBECONFIG naming two files, a new context
// goes to the first file and a removal to the file the context is in;
// the current context is cleared where it is set; the rest stays.
func TestSetAcrossFiles(t *testing.T) {
	dir := t.TempDir()
	first, second := filepath.Join(dir, "first"), filepath.Join(dir, "second")
	proxy, _ := url.Parse("socks5://u:p@127.0.0.1:1080")
	old := Context{Cluster: "old", Server: "https://old.clustral.internal", CA: []byte("ca"), Proxy: proxy, Login: "alice"}
	if err := (Writer{Path: second}).Set([]Context{old}, nil); err != nil {
		t.Fatal(err)
	}
	mine := "apiVersion: v1\nkind: Config\ncurrent-context: clustral-old\nclusters:\n- name: mine\n  cluster:\n    server: https://mine.example.com\ncontexts:\n- name: mine\n  context:\n    cluster: mine\n"
	if err := os.WriteFile(first, []byte(mine), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBECONFIG", first+string(os.PathListSeparator)+second)
	k := Writer{}
	if got := k.File(); got != first {
		t.Fatalf("File() = %s, want %s", got, first)
	}
	if err := k.Set([]Context{{Cluster: "new", Server: "https://new.clustral.internal", CA: []byte("ca"), Proxy: proxy, Login: "alice"}}, []string{"clustral-old"}); err != nil {
		t.Fatal(err)
	}
	f1, err := clientcmd.LoadFromFile(first)
	if err != nil {
		t.Fatal(err)
	}
	f2, err := clientcmd.LoadFromFile(second)
	if err != nil {
		t.Fatal(err)
	}
	if f1.Contexts["clustral-new"] == nil || f1.Clusters["clustral-new"] == nil || f1.AuthInfos["clustral-new"] == nil {
		t.Errorf("%s lacks the new context: %v", first, f1.Contexts)
	}
	if f1.Contexts["mine"] == nil || f1.Clusters["mine"] == nil {
		t.Errorf("%s lost the user's own context", first)
	}
	if f1.CurrentContext != "" {
		t.Errorf("current context = %q, want it cleared with the context it named", f1.CurrentContext)
	}
	if f2.Contexts["clustral-old"] != nil || f2.Clusters["clustral-old"] != nil || f2.AuthInfos["clustral-old"] != nil {
		t.Errorf("%s still has the removed context", second)
	}
	if f2.Contexts["clustral-new"] != nil {
		t.Errorf("the new context went to %s too", second)
	}
}

// TestSetLocked: a kubeconfig another program is editing (its lock file
// exists) is left alone, and the error names the lock.
func TestSetLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	content := "apiVersion: v1\nkind: Config\ncurrent-context: mine\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".lock", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	proxy, _ := url.Parse("socks5://u:p@127.0.0.1:1080")
	err := Writer{Path: path}.Set([]Context{{Cluster: "prod", Server: "https://prod.clustral.internal", Proxy: proxy}}, nil)
	if err == nil || !strings.Contains(err.Error(), path+".lock") {
		t.Fatalf("Set on a locked kubeconfig = %v, want an error naming the lock", err)
	}
	if b, _ := os.ReadFile(path); string(b) != content {
		t.Errorf("locked kubeconfig changed:\n%s", b)
	}
	if _, err := os.Stat(path + ".lock"); err != nil {
		t.Errorf("the other program's lock was removed: %v", err)
	}
	os.Remove(path + ".lock")
	if err := (Writer{Path: path}).Set([]Context{{Cluster: "prod", Server: "https://prod.clustral.internal", Proxy: proxy}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".lock"); err == nil {
		t.Error("Set left its lock behind")
	}
}

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
