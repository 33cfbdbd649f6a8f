package kubeconfig

import (
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
