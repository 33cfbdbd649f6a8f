package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/clustral/clustral/integration/cmd/internal/maketest"
)

// TestMakeImage runs `make image` against an in-process registry, pulls
// the index back and checks what a container runtime would run: each
// platform's user, entrypoint, architecture and labels, and the amd64
// image's binary, which must print the version it was built with. Then
// it builds the same binaries into an OCI layout and expects the same
// digest: the image is reproducible.
func TestMakeImage(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-builds clustral twice")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")

	root := maketest.Root(t)
	bin := t.TempDir()
	const version, commit = "v9.8.7-image", "abc1234"
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	out := maketest.Make(ctx, t, root, "image",
		"BIN="+bin, "VERSION="+version, "COMMIT="+commit, "IMAGE="+host+"/clustral/clustral")

	ref, err := name.ParseReference(host + "/clustral/clustral:" + version)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(ref, remote.WithContext(ctx))
	if err != nil {
		t.Fatalf("pull %s: %v\nmake printed:\n%s", ref, err, out)
	}
	if mt, _ := idx.MediaType(); mt != types.OCIImageIndex {
		t.Errorf("index media type %s, want %s", mt, types.OCIImageIndex)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var arches []string
	for _, d := range im.Manifests {
		if d.Platform == nil {
			t.Fatalf("manifest %s has no platform in the index", d.Digest)
		}
		arches = append(arches, d.Platform.OS+"/"+d.Platform.Architecture)
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != d.Platform.OS || cf.Architecture != d.Platform.Architecture {
			t.Errorf("%s: config says %s/%s", d.Platform, cf.OS, cf.Architecture)
		}
		if cf.Config.User != "65532:65532" {
			t.Errorf("%s: user %q, want 65532:65532 (non-root)", d.Platform, cf.Config.User)
		}
		if want := []string{"/usr/local/bin/clustral"}; !slices.Equal(cf.Config.Entrypoint, want) {
			t.Errorf("%s: entrypoint %q, want %q", d.Platform, cf.Config.Entrypoint, want)
		}
		for k, want := range map[string]string{
			"org.opencontainers.image.version":  version,
			"org.opencontainers.image.revision": commit,
			"org.opencontainers.image.source":   "https://github.com/clustral/clustral",
		} {
			if got := cf.Config.Labels[k]; got != want {
				t.Errorf("%s: label %s = %q, want %q", d.Platform, k, got, want)
			}
		}
		files := extract(t, img)
		if !bytes.Contains(files["etc/ssl/certs/ca-certificates.crt"], []byte("-----BEGIN CERTIFICATE-----")) {
			t.Errorf("%s: no CA bundle at /etc/ssl/certs/ca-certificates.crt", d.Platform)
		}
		if !bytes.Contains(files["etc/passwd"], []byte("nonroot:x:65532:65532:")) {
			t.Errorf("%s: /etc/passwd lacks the nonroot user:\n%s", d.Platform, files["etc/passwd"])
		}
		if d.Platform.Architecture == "amd64" && runtime.GOOS == "linux" && runtime.GOARCH == "amd64" {
			if len(files["usr/local/bin/clustral"]) == 0 {
				t.Fatal("no /usr/local/bin/clustral in the amd64 image")
			}
			maketest.CheckVersion(t, files["usr/local/bin/clustral"], "the image", version, commit, "linux/amd64")
		}
	}
	slices.Sort(arches)
	if want := []string{"linux/amd64", "linux/arm64"}; !slices.Equal(arches, want) {
		t.Errorf("index platforms %q, want %q", arches, want)
	}

	// The same inputs as an OCI layout give the same index.
	dir := filepath.Join(t.TempDir(), "image")
	var stdout bytes.Buffer
	if err := run(ctx, []string{"-version", version, "-commit", commit, "-bin", bin, "-out", dir,
		"-created", createdOf(t, root)}, &stdout); err != nil {
		t.Fatal(err)
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	tm, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(tm.Manifests) != 1 || tm.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != version {
		t.Fatalf("layout index.json: %+v, want one index named %s", tm.Manifests, version)
	}
	pushed, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if got := tm.Manifests[0].Digest; got != pushed {
		t.Errorf("layout holds %s, registry holds %s: the build is not reproducible", got, pushed)
	}
}

// createdOf is the timestamp make image passes: the commit time.
func createdOf(t *testing.T, root string) string {
	t.Helper()
	c := exec.Command("git", "log", "-1", "--format=%ct")
	c.Dir = root
	out, err := c.Output()
	if err != nil {
		return "0"
	}
	return strings.TrimSpace(string(out))
}

// extract returns the regular files of img's flattened filesystem.
func extract(t *testing.T, img v1.Image) map[string][]byte {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimPrefix(h.Name, "/")] = b
	}
	return files
}

// TestFlags checks that bad input is refused with a message naming the fix.
func TestFlags(t *testing.T) {
	bin := t.TempDir()
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no version", []string{"-commit", "c"}, "-version and -commit are required"},
		{"bad platform", []string{"-version", "v1", "-commit", "c", "-platforms", "darwin/arm64"}, "want linux/<arch>"},
		{"bad created", []string{"-version", "v1", "-commit", "c", "-created", "yesterday"}, "want Unix seconds"},
		{"argument", []string{"-version", "v1", "-commit", "c", "extra"}, `unexpected argument "extra"`},
		{"no binary", []string{"-version", "v1", "-commit", "c", "-bin", bin}, "make build GOOS=linux GOARCH=amd64"},
		{"no CA bundle", []string{"-version", "v1", "-commit", "c", "-ca-bundle", ""}, "pass CA_BUNDLE="},
		{"bad CA bundle", []string{"-version", "v1", "-commit", "c", "-ca-bundle", ca}, "holds no PEM certificate"},
		{"bad tag", []string{"-version", "v1+x", "-commit", "c", "-bin", fakeBins(t), "-push", "127.0.0.1:1/x"}, "-push"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(t.Context(), tc.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
			}
		})
	}
}

// TestLayoutRefusesOtherDirectory: -out never deletes a directory that
// is not an OCI layout.
func TestLayoutRefusesOtherDirectory(t *testing.T) {
	dir := t.TempDir()
	keep := filepath.Join(dir, "keep")
	if err := os.WriteFile(keep, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := run(t.Context(), []string{"-version", "v1", "-commit", "c", "-bin", fakeBins(t), "-out", dir}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "not an OCI image layout") {
		t.Fatalf("run = %v, want a refusal", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("the directory's file is gone: %v", err)
	}
	// An earlier layout is replaced.
	out := filepath.Join(t.TempDir(), "image")
	for range 2 {
		if err := run(t.Context(), []string{"-version", "v1", "-commit", "c", "-bin", fakeBins(t), "-out", out}, io.Discard); err != nil {
			t.Fatal(err)
		}
	}
}

// fakeBins writes stand-in binaries for both default platforms.
func fakeBins(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, arch := range []string{"amd64", "arm64"} {
		if err := os.WriteFile(filepath.Join(dir, "clustral-linux-"+arch), []byte("#!/bin/false\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
