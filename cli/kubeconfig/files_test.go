package kubeconfig

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

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
