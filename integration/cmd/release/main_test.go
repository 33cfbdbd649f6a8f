package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/integration/cmd/internal/maketest"
)

// archiveFile is one regular file read back from an archive.
type archiveFile struct {
	mode int64
	data []byte
}

// TestMakeRelease runs `make release` and checks every archive: the
// binary of its platform, the three completions, the man pages, the
// README, and that `sha256sum -c SHA256SUMS` verifies them all. The
// linux/amd64 binary from its archive must print its version.
func TestMakeRelease(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-builds clustral for four platforms")
	}
	for _, tool := range []string{"make", "sha256sum"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	root := maketest.Root(t)
	bin := t.TempDir()
	const version, commit = "v9.8.7-release", "abc1234"
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	defer cancel()
	maketest.Make(ctx, t, root, "release", "BIN="+bin, "VERSION="+version, "COMMIT="+commit)
	out := filepath.Join(bin, "release")

	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	platforms := []string{"linux/amd64", "linux/arm64", "darwin/amd64", "darwin/arm64"}
	var want []string
	for _, p := range platforms {
		goos, arch, _ := strings.Cut(p, "/")
		base := "clustral_" + version + "_" + goos + "_" + arch
		want = append(want, base+".tar.gz")
		files := readArchive(t, filepath.Join(out, base+".tar.gz"), base)

		b, err := os.ReadFile(filepath.Join(bin, "clustral-"+goos+"-"+arch))
		if err != nil {
			t.Fatal(err)
		}
		if f := files["clustral"]; !bytes.Equal(f.data, b) || f.mode != 0o755 {
			t.Errorf("%s: clustral (mode %o, %d bytes) is not the %s binary with mode 755", base, f.mode, len(f.data), p)
		}
		checkShared(t, base, files, readme)
		if goos == runtime.GOOS && arch == runtime.GOARCH {
			maketest.CheckVersion(t, files["clustral"].data, "the archive", version, commit, p)
		}
	}

	got := dirNames(t, out)
	slices.Sort(want)
	if w := append([]string{"SHA256SUMS"}, want...); !slices.Equal(got, w) {
		t.Errorf("bin/release holds %q, want %q", got, w)
	}
	sums, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for line := range strings.Lines(string(sums)) {
		_, file, ok := strings.Cut(strings.TrimSpace(line), "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q is not `<hex>  <file>`", line)
		}
		listed = append(listed, file)
	}
	slices.Sort(listed)
	if !slices.Equal(listed, want) {
		t.Errorf("SHA256SUMS lists %q, want %q", listed, want)
	}
	check := exec.CommandContext(ctx, "sha256sum", "--strict", "-c", "SHA256SUMS")
	check.Dir = out
	if o, err := check.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum -c SHA256SUMS: %v\n%s", err, o)
	}
}

// checkShared checks the files every archive holds besides the binary.
func checkShared(t *testing.T, base string, files map[string]archiveFile, readme []byte) {
	t.Helper()
	for name, marker := range map[string]string{
		"completions/clustral.bash": "__start_clustral",
		"completions/_clustral":     "#compdef clustral",
		"completions/clustral.fish": "complete -c clustral",
	} {
		if !bytes.Contains(files[name].data, []byte(marker)) {
			t.Errorf("%s: %s lacks %q", base, name, marker)
		}
	}
	for _, page := range []string{"clustral.1", "clustral-login.1", "clustral-up.1", "clustral-agent.1", "clustral-coordinator.1", "clustral-completion.1"} {
		f, ok := files["man/man1/"+page]
		if !ok {
			t.Errorf("%s: no man/man1/%s", base, page)
			continue
		}
		if !bytes.HasPrefix(f.data, []byte(`.nh`)) || !bytes.Contains(f.data, []byte(`.TH "CLUSTRAL" "1"`)) {
			t.Errorf("%s: man/man1/%s is not a section 1 man page:\n%.200s", base, page, f.data)
		}
		if bytes.Contains(f.data, []byte("Auto generated")) {
			t.Errorf("%s: man/man1/%s carries cobra's generation stamp", base, page)
		}
	}
	if up := files["man/man1/clustral-up.1"].data; !bytes.Contains(up, []byte("(clustral-<cluster>)")) {
		t.Errorf("%s: clustral-up.1 lost the text in angle brackets:\n%s", base, up)
	}
	if !bytes.Equal(files["README.md"].data, readme) {
		t.Errorf("%s: README.md is not the repository's", base)
	}
}

// readArchive returns the regular files of a .tar.gz, by path below its
// single top directory base, and fails on any entry outside it.
func readArchive(t *testing.T, path, base string) map[string]archiveFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	files := map[string]archiveFile{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		rel, ok := strings.CutPrefix(h.Name, base+"/")
		if !ok {
			t.Errorf("%s: entry %s is outside %s/", path, h.Name, base)
			continue
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: %s is owned by %d:%d, want root", path, h.Name, h.Uid, h.Gid)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[rel] = archiveFile{mode: h.Mode, data: b}
	}
	return files
}

// TestRelease runs the program on stand-in binaries: the archives are
// reproducible, an earlier release's archives are removed, other files
// are kept, and the documents that exist are included.
func TestRelease(t *testing.T) {
	bins := t.TempDir()
	for _, p := range []string{"linux-amd64", "darwin-arm64"} {
		if err := os.WriteFile(filepath.Join(bins, "clustral-"+p), []byte("binary "+p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	docs := t.TempDir()
	if err := os.WriteFile(filepath.Join(docs, "LICENSE"), []byte("license text\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	for _, f := range []string{"clustral_v0.1.0_linux_amd64.tar.gz", "SHA256SUMS", "notes.txt"} {
		if err := os.WriteFile(filepath.Join(out, f), []byte("old"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"-version", "v1.0.0", "-bin", bins, "-out", out, "-platforms", "linux/amd64,darwin/arm64",
		"-docs", filepath.Join(docs, "README.md") + "," + filepath.Join(docs, "LICENSE"), "-created", "1700000000"}
	if err := run(args, io.Discard); err != nil {
		t.Fatal(err)
	}
	first, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	if err := run(args, io.Discard); err != nil {
		t.Fatal(err)
	}
	second, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, second) {
		t.Errorf("two runs on the same input differ:\n%s\n%s", first, second)
	}
	names := dirNames(t, out)
	if want := []string{"SHA256SUMS", "clustral_v1.0.0_darwin_arm64.tar.gz", "clustral_v1.0.0_linux_amd64.tar.gz", "notes.txt"}; !slices.Equal(names, want) {
		t.Errorf("out holds %q, want %q", names, want)
	}
	files := readArchive(t, filepath.Join(out, "clustral_v1.0.0_darwin_arm64.tar.gz"), "clustral_v1.0.0_darwin_arm64")
	if string(files["clustral"].data) != "binary darwin-arm64" {
		t.Errorf("darwin/arm64 archive holds the binary %q", files["clustral"].data)
	}
	if string(files["LICENSE"].data) != "license text\n" {
		t.Errorf("LICENSE in the archive: %q", files["LICENSE"].data)
	}
	if _, ok := files["README.md"]; ok {
		t.Error("a README.md that does not exist is in the archive")
	}
}

// TestFlags checks that bad input is refused with a message naming the
// fix, before anything is written.
func TestFlags(t *testing.T) {
	empty := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no version", nil, "-version is required"},
		{"slash in version", []string{"-version", "a/b"}, "no slash or space"},
		{"bad platform", []string{"-version", "v1", "-platforms", "linux"}, "want os/arch"},
		{"bad created", []string{"-version", "v1", "-created", "-5"}, "want Unix seconds"},
		{"argument", []string{"-version", "v1", "extra"}, `unexpected argument "extra"`},
		{"no binary", []string{"-version", "v1", "-bin", empty, "-platforms", "darwin/arm64"}, "make build GOOS=darwin GOARCH=arm64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "release")
			err := run(append(tc.args, "-out", out), io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("%s was created although the input was refused", out)
			}
		})
	}
}

// dirNames returns the names in directory dir, sorted.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
