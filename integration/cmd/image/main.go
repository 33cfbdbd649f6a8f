// Command image builds the clustral container image without a container
// engine: a multi-architecture OCI image index (one image per platform)
// FROM scratch, holding the static binary built by `make build
// GOOS=linux GOARCH=<arch>`, a CA bundle and a non-root user. It writes
// an OCI image layout directory, or pushes the index to a registry.
// `make image` runs it:
//
//	make image                                  # OCI layout in bin/image/
//	make image IMAGE=registry.example.com/clustral/clustral
//
// It lives in the integration module so that the root module, which
// `go install` and importers resolve, does not depend on a registry
// client; the clustral binary never imports it.
//
// The build is reproducible: every file and the image's creation time
// take one timestamp (-created, default $SOURCE_DATE_EPOCH or the Unix
// epoch), so the same binaries always give the same digests.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/clustral/clustral/integration/cmd/internal/stamp"
)

// Where things are in the image. The Dockerfile puts the binary at the
// same path and runs as the same user.
const (
	binPath  = "/usr/local/bin/clustral"
	caPath   = "/etc/ssl/certs/ca-certificates.crt"
	userID   = 65532
	userName = "nonroot"
	homeDir  = "/home/nonroot"
	source   = "https://github.com/clustral/clustral"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

// options is what one build needs; flags fill it.
type options struct {
	version   string
	commit    string
	binDir    string   // holds clustral-linux-<arch>
	platforms []string // os/arch
	caFile    string
	created   time.Time
	out       string // OCI layout directory, when push is empty
	push      string // registry reference; the version is its default tag
}

func parseFlags(args []string) (options, error) {
	fl := flag.NewFlagSet("image", flag.ContinueOnError)
	var o options
	var platforms, created string
	fl.StringVar(&o.version, "version", "", "image version: the label org.opencontainers.image.version and the default tag (required)")
	fl.StringVar(&o.commit, "commit", "", "source commit: the label org.opencontainers.image.revision (required)")
	fl.StringVar(&o.binDir, "bin", "bin", "directory holding clustral-linux-<arch> for each platform (make build GOOS=linux GOARCH=<arch>)")
	fl.StringVar(&platforms, "platforms", "linux/amd64,linux/arm64", "comma-separated os/arch list")
	fl.StringVar(&o.caFile, "ca-bundle", caPath, "PEM bundle of CA certificates copied to "+caPath)
	fl.StringVar(&created, "created", os.Getenv("SOURCE_DATE_EPOCH"), "creation time of the image and its files, Unix seconds (default $SOURCE_DATE_EPOCH, else 0)")
	fl.StringVar(&o.out, "out", filepath.Join("bin", "image"), "OCI image layout directory to write (replaced if it is one)")
	fl.StringVar(&o.push, "push", "", "push to this registry reference (e.g. ghcr.io/clustral/clustral) instead of writing -out")
	if err := fl.Parse(args); err != nil {
		return o, err
	}
	if fl.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q: every input is a flag (see -h)", fl.Arg(0))
	}
	if o.version == "" || o.commit == "" {
		return o, errors.New("-version and -commit are required (make image passes them from git)")
	}
	for p := range strings.SplitSeq(platforms, ",") {
		os_, arch, ok := strings.Cut(strings.TrimSpace(p), "/")
		if !ok || os_ != "linux" || arch == "" {
			return o, fmt.Errorf("platform %q: want linux/<arch>, e.g. linux/amd64 (the image runs the Linux binary)", p)
		}
		o.platforms = append(o.platforms, os_+"/"+arch)
	}
	if o.caFile == "" {
		return o, errors.New("-ca-bundle is empty: make found no CA bundle on this machine; pass CA_BUNDLE=<PEM file> to make, or -ca-bundle")
	}
	var err error
	o.created, err = stamp.Created(created)
	return o, err
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	idx, err := build(o)
	if err != nil {
		return err
	}
	digest, err := idx.Digest()
	if err != nil {
		return err
	}
	if o.push != "" {
		ref, err := name.ParseReference(o.push, name.WithDefaultTag(o.version))
		if err != nil {
			return fmt.Errorf("-push %q: %w (want registry/repository[:tag])", o.push, err)
		}
		if err := remote.WriteIndex(ref, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return fmt.Errorf("push %s: %w", ref, err)
		}
		fmt.Fprintf(stdout, "pushed %s@%s\n", ref, digest)
		return nil
	}
	if err := writeLayout(o.out, idx, o.version); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (index %s)\n", o.out, digest)
	return nil
}

// build assembles the image index: one image per platform sharing the
// base layer, the binary in a layer of its own.
func build(o options) (v1.ImageIndex, error) {
	ca, err := os.ReadFile(o.caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w (pass -ca-bundle, or CA_BUNDLE= to make, with a PEM file, e.g. from the ca-certificates package)", err)
	}
	if !bytes.Contains(ca, []byte("-----BEGIN CERTIFICATE-----")) {
		return nil, fmt.Errorf("CA bundle %s holds no PEM certificate", o.caFile)
	}
	base, err := layer(baseFiles(ca), o.created)
	if err != nil {
		return nil, fmt.Errorf("base layer: %w", err)
	}
	labels := map[string]string{
		"org.opencontainers.image.title":    "clustral",
		"org.opencontainers.image.source":   source,
		"org.opencontainers.image.url":      source,
		"org.opencontainers.image.version":  o.version,
		"org.opencontainers.image.revision": o.commit,
		"org.opencontainers.image.created":  o.created.Format(time.RFC3339),
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range o.platforms {
		osName, arch, _ := strings.Cut(p, "/")
		binFile := filepath.Join(o.binDir, "clustral-"+osName+"-"+arch)
		bin, err := os.ReadFile(binFile)
		if err != nil {
			return nil, fmt.Errorf("binary for %s: %w (build it with: make build GOOS=%s GOARCH=%s)", p, err, osName, arch)
		}
		binLayer, err := layer([]file{{name: strings.TrimPrefix(binPath, "/"), mode: 0o755, data: bin}}, o.created)
		if err != nil {
			return nil, fmt.Errorf("binary layer for %s: %w", p, err)
		}
		img, err := mutate.AppendLayers(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON), base, binLayer)
		if err != nil {
			return nil, fmt.Errorf("image for %s: %w", p, err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = osName, arch
		cf.Created = v1.Time{Time: o.created}
		cf.Config = v1.Config{
			User:       fmt.Sprintf("%d:%d", userID, userID),
			Entrypoint: []string{binPath},
			Cmd:        []string{"--help"},
			Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=" + caPath, "HOME=" + homeDir},
			WorkingDir: homeDir,
			Labels:     labels,
		}
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			return nil, fmt.Errorf("config for %s: %w", p, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: osName, Architecture: arch}},
		})
	}
	return mutate.Annotations(idx, labels).(v1.ImageIndex), nil
}

// file is one entry of a layer; a name ending in "/" is a directory.
type file struct {
	name     string
	mode     int64
	uid, gid int
	data     []byte
}

// baseFiles is what distroless/static gives a static binary: CA
// certificates, a passwd and group naming the non-root user, its home
// and a /tmp.
func baseFiles(ca []byte) []file {
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\n%s:x:%d:%d:%s:%s:/sbin/nologin\n", userName, userID, userID, userName, homeDir)
	group := fmt.Sprintf("root:x:0:\n%s:x:%d:\n", userName, userID)
	return []file{
		{name: "etc/", mode: 0o755},
		{name: "etc/group", mode: 0o644, data: []byte(group)},
		{name: "etc/passwd", mode: 0o644, data: []byte(passwd)},
		{name: "etc/ssl/", mode: 0o755},
		{name: "etc/ssl/certs/", mode: 0o755},
		{name: strings.TrimPrefix(caPath, "/"), mode: 0o644, data: ca},
		{name: "home/", mode: 0o755},
		{name: strings.TrimPrefix(homeDir, "/") + "/", mode: 0o700, uid: userID, gid: userID},
		{name: "root/", mode: 0o700},
		{name: "tmp/", mode: 0o1777},
	}
}

// layer makes a gzip-compressed OCI layer of files. Parent directories
// of a file must come before it (the binary's are created here).
func layer(files []file, mtime time.Time) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	seen := map[string]bool{}
	for _, f := range files {
		// Add missing parent directories, root-owned, 0755.
		dir := strings.TrimSuffix(f.name, "/")
		var parents []string
		for d := filepath.Dir(dir); d != "." && !seen[d+"/"]; d = filepath.Dir(d) {
			parents = append(parents, d+"/")
		}
		slices.Reverse(parents)
		for _, d := range parents {
			if err := writeEntry(tw, file{name: d, mode: 0o755}, mtime); err != nil {
				return nil, err
			}
			seen[d] = true
		}
		if err := writeEntry(tw, f, mtime); err != nil {
			return nil, err
		}
		seen[f.name] = true
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

func writeEntry(tw *tar.Writer, f file, mtime time.Time) error {
	h := &tar.Header{
		Name:    f.name,
		Mode:    f.mode,
		Uid:     f.uid,
		Gid:     f.gid,
		ModTime: mtime,
		Format:  tar.FormatPAX,
	}
	if strings.HasSuffix(f.name, "/") {
		h.Typeflag = tar.TypeDir
	} else {
		h.Typeflag = tar.TypeReg
		h.Size = int64(len(f.data))
	}
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("tar %s: %w", f.name, err)
	}
	if _, err := tw.Write(f.data); err != nil {
		return fmt.Errorf("tar %s: %w", f.name, err)
	}
	return nil
}

// writeLayout writes idx as an OCI image layout in dir, replacing an
// earlier layout there; a directory that is not a layout is left alone.
func writeLayout(dir string, idx v1.ImageIndex, version string) error {
	if _, err := os.Stat(dir); err == nil {
		if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
			return fmt.Errorf("%s exists and is not an OCI image layout; remove it or choose another -out", dir)
		}
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("replace %s: %w", dir, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("write %s: %w", dir, err)
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": version,
	})); err != nil {
		return fmt.Errorf("write %s: %w", dir, err)
	}
	return nil
}
