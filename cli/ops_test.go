package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/testkit"
)

func TestAgentManifest(t *testing.T) {
	const token = "cjt_secret-token"
	ca := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	for _, tt := range []struct {
		name string
		ca   []byte
	}{{"public CA", nil}, {"private CA", ca}} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := agentManifest("prod", token, "https://clustral.example.com:8443", tt.ca)
			if err != nil {
				t.Fatal(err)
			}
			docs := bytes.Split(b, []byte("\n---\n"))
			if len(docs) != 2 {
				t.Fatalf("%d documents, want 2:\n%s", len(docs), b)
			}
			var s corev1.Secret
			if err := yaml.UnmarshalStrict(docs[0], &s); err != nil {
				t.Fatalf("secret: %v\n%s", err, docs[0])
			}
			if s.Kind != "Secret" || s.APIVersion != "v1" || s.Namespace != "clustral" || s.Name != "clustral-join-token" ||
				string(s.Data["token"]) != token || len(s.Data) != 1 || s.Type != corev1.SecretTypeOpaque {
				t.Errorf("secret = %+v", s)
			}
			var cm corev1.ConfigMap
			if err := yaml.UnmarshalStrict(docs[1], &cm); err != nil {
				t.Fatalf("configmap: %v\n%s", err, docs[1])
			}
			if cm.Kind != "ConfigMap" || cm.Namespace != "clustral" || cm.Name != "clustral-agent" ||
				cm.Data["coordinator-url"] != "https://clustral.example.com:8443" || cm.Data["ca.crt"] != string(tt.ca) {
				t.Errorf("configmap = %+v", cm)
			}
			if strings.Contains(string(docs[1]), token) {
				t.Error("the join token leaks into the ConfigMap")
			}
		})
	}
}

func TestClustersAddManifestFlags(t *testing.T) {
	for _, args := range [][]string{
		{"clusters", "add", "prod", "--manifest-coordinator-url", "https://x"},
		{"clusters", "add", "prod", "--manifest", "-o", "json"},
	} {
		if code, _, errb := runCLI(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want usage error; stderr %q", args, code, errb)
		}
	}
}

// newStore makes a store with a few records in dir and closes it.
func newStore(t *testing.T, dir string) {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(dir, "coordinator.db"))
	if err != nil {
		t.Fatal(err)
	}
	err = st.Update(func(tx store.Tx) error {
		for _, k := range []string{"usr_a", "usr_b"} {
			if err := tx.PutRaw(store.Users, k, []byte(`{}`)); err != nil {
				return err
			}
		}
		return tx.PutRaw(store.Clusters, "cls_a", []byte(`{}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCoordinatorBackupOffline(t *testing.T) {
	data, out := t.TempDir(), t.TempDir()
	newStore(t, data)
	file := filepath.Join(out, "backup.db")
	if err := os.WriteFile(file, []byte("an older backup"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "coordinator", "backup", "--data-dir", data, file)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "2 users, 1 clusters") {
		t.Errorf("stdout = %q", stdout)
	}
	testkit.CheckPerm(t, "backup", file, 0o600)
	counts, err := store.Verify(file)
	if err != nil || counts[store.Users] != 2 {
		t.Fatalf("backup: %v, %v", counts, err)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 1 {
		t.Errorf("backup left %d files in its directory, want 1", len(ents))
	}

	// A store a coordinator holds cannot be read offline; the old backup
	// stays as it is.
	st, err := store.OpenBolt(filepath.Join(data, "coordinator.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	before, _ := os.ReadFile(file)
	code, _, stderr = runCLI(t, "coordinator", "backup", "--data-dir", data, file)
	if code == 0 || !strings.Contains(stderr, "a coordinator holds it") {
		t.Errorf("backup of a held store: exit %d, stderr %q", code, stderr)
	}
	if after, _ := os.ReadFile(file); !bytes.Equal(before, after) {
		t.Error("a failed backup changed the existing file")
	}

	// Nothing there.
	if code, _, _ := runCLI(t, "coordinator", "backup", "--data-dir", t.TempDir(), file); code == 0 {
		t.Error("backup of a missing store succeeded")
	}
}

// TestCrossBuild builds the CLI for the platforms released besides the
// host's. It takes minutes on a cold cache, so -short skips it.
func TestCrossBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("cross builds take minutes; run without -short")
	}
	for _, p := range []struct{ goos, goarch string }{
		{"linux", "arm64"}, {"darwin", "amd64"}, {"darwin", "arm64"},
	} {
		t.Run(p.goos+"/"+p.goarch, func(t *testing.T) {
			if p.goos == runtime.GOOS && p.goarch == runtime.GOARCH {
				t.Skip("the host platform")
			}
			// -trimpath as make build-cross and make release build, so
			// the packages compiled here are reused there.
			cmd := exec.CommandContext(t.Context(), "go", "build", "-trimpath", "-o", os.DevNull, "./clustral")
			cmd.Env = append(os.Environ(), "GOOS="+p.goos, "GOARCH="+p.goarch, "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("GOOS=%s GOARCH=%s go build ./cli/clustral: %v\n%s", p.goos, p.goarch, err, out)
			}
		})
	}
}
