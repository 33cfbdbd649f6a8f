// Command release packages the cross-built clustral binaries (make
// build-cross) for download: for every platform an archive
// clustral_<version>_<os>_<arch>.tar.gz holding
//
//	clustral_<version>_<os>_<arch>/clustral
//	clustral_<version>_<os>_<arch>/completions/clustral.bash   (bash)
//	clustral_<version>_<os>_<arch>/completions/_clustral       (zsh)
//	clustral_<version>_<os>_<arch>/completions/clustral.fish   (fish)
//	clustral_<version>_<os>_<arch>/man/man1/clustral*.1
//	clustral_<version>_<os>_<arch>/README.md, LICENSE          (those present)
//
// and a SHA256SUMS file over the archives, in the format `sha256sum -c`
// reads. `make release` runs it. The completions and man pages come from
// the same cobra commands as the binary (cli.Command), generated here
// once for all platforms since they do not depend on the platform. The
// archives are reproducible: every entry carries one timestamp
// (-created, default $SOURCE_DATE_EPOCH or the Unix epoch).
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"

	"github.com/clustral/clustral/cli"
	"github.com/clustral/clustral/integration/cmd/internal/stamp"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
}

type options struct {
	version   string
	binDir    string   // holds clustral-<os>-<arch>
	platforms []string // os/arch
	docs      []string // files copied into every archive when present
	created   time.Time
	out       string
}

func parseFlags(args []string) (options, error) {
	fl := flag.NewFlagSet("release", flag.ContinueOnError)
	var o options
	var platforms, docs, created string
	fl.StringVar(&o.version, "version", "", "release version, part of each archive's name (required)")
	fl.StringVar(&o.binDir, "bin", "bin", "directory holding clustral-<os>-<arch> for each platform (make build-cross)")
	fl.StringVar(&platforms, "platforms", "linux/amd64,linux/arm64,darwin/amd64,darwin/arm64", "comma-separated os/arch list")
	fl.StringVar(&docs, "docs", "../README.md,../LICENSE", "comma-separated files added to every archive when they exist")
	fl.StringVar(&created, "created", os.Getenv("SOURCE_DATE_EPOCH"), "time of every archive entry, Unix seconds (default $SOURCE_DATE_EPOCH, else 0)")
	fl.StringVar(&o.out, "out", filepath.Join("bin", "release"), "directory to write the archives and SHA256SUMS to (earlier archives in it are removed)")
	if err := fl.Parse(args); err != nil {
		return o, err
	}
	if fl.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q: every input is a flag (see -h)", fl.Arg(0))
	}
	if o.version == "" {
		return o, errors.New("-version is required (make release passes git describe)")
	}
	if strings.ContainsAny(o.version, `/\ `) {
		return o, fmt.Errorf("-version %q: a version is part of a file name, so it has no slash or space", o.version)
	}
	for p := range strings.SplitSeq(platforms, ",") {
		goos, arch, ok := strings.Cut(strings.TrimSpace(p), "/")
		if !ok || goos == "" || arch == "" || strings.Contains(arch, "/") {
			return o, fmt.Errorf("platform %q: want os/arch, e.g. darwin/arm64", p)
		}
		o.platforms = append(o.platforms, goos+"/"+arch)
	}
	for d := range strings.SplitSeq(docs, ",") {
		if d = strings.TrimSpace(d); d != "" {
			o.docs = append(o.docs, d)
		}
	}
	var err error
	o.created, err = stamp.Created(created)
	return o, err
}

// entry is one file of an archive, its name relative to the archive's
// top directory.
type entry struct {
	name string
	mode int64
	data []byte
}

func run(args []string, stdout io.Writer) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	shared, err := sharedFiles(o)
	if err != nil {
		return err
	}
	// Read every input before touching -out.
	bins := map[string][]byte{}
	for _, p := range o.platforms {
		goos, arch, _ := strings.Cut(p, "/")
		b, err := os.ReadFile(filepath.Join(o.binDir, "clustral-"+goos+"-"+arch))
		if err != nil {
			return fmt.Errorf("binary for %s: %w (build it with: make build-cross, or make build GOOS=%s GOARCH=%s)", p, err, goos, arch)
		}
		bins[p] = b
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	// Drop an earlier release's archives so SHA256SUMS lists all there are.
	old, err := filepath.Glob(filepath.Join(o.out, "clustral_*.tar.gz"))
	if err != nil {
		return err
	}
	for _, f := range append(old, filepath.Join(o.out, "SHA256SUMS")) {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove the earlier %s: %w", f, err)
		}
	}
	var sums bytes.Buffer
	for _, p := range o.platforms {
		goos, arch, _ := strings.Cut(p, "/")
		base := "clustral_" + o.version + "_" + goos + "_" + arch
		files := append([]entry{{name: "clustral", mode: 0o755, data: bins[p]}}, shared...)
		archive, err := tarGz(base, files, o.created)
		if err != nil {
			return fmt.Errorf("archive for %s: %w", p, err)
		}
		name := base + ".tar.gz"
		if err := os.WriteFile(filepath.Join(o.out, name), archive, 0o644); err != nil {
			return err
		}
		sum := sha256.Sum256(archive)
		fmt.Fprintf(&sums, "%s  %s\n", hex.EncodeToString(sum[:]), name)
		fmt.Fprintf(stdout, "wrote %s\n", filepath.Join(o.out, name))
	}
	if err := os.WriteFile(filepath.Join(o.out, "SHA256SUMS"), sums.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s\n", filepath.Join(o.out, "SHA256SUMS"))
	return nil
}

// sharedFiles are the files every archive holds besides the binary:
// completions, man pages and the documents present.
func sharedFiles(o options) ([]entry, error) {
	root := cli.Command()
	var files []entry
	for _, c := range []struct {
		name string
		gen  func(io.Writer) error
	}{
		{"completions/clustral.bash", func(w io.Writer) error { return root.GenBashCompletionV2(w, true) }},
		{"completions/_clustral", root.GenZshCompletion},
		{"completions/clustral.fish", func(w io.Writer) error { return root.GenFishCompletion(w, true) }},
	} {
		var buf bytes.Buffer
		if err := c.gen(&buf); err != nil {
			return nil, fmt.Errorf("%s: %w", c.name, err)
		}
		files = append(files, entry{name: c.name, mode: 0o644, data: buf.Bytes()})
	}
	man, err := manPages(root, o)
	if err != nil {
		return nil, err
	}
	files = append(files, man...)
	for _, d := range o.docs {
		b, err := os.ReadFile(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		files = append(files, entry{name: filepath.Base(d), mode: 0o644, data: b})
	}
	return files, nil
}

// manPages renders a section 1 page for every command a user sees, named
// like doc.GenManTree names them (clustral-up.1 for `clustral up`).
func manPages(root *cobra.Command, o options) ([]entry, error) {
	header := &doc.GenManHeader{
		Title:   "CLUSTRAL",
		Section: "1",
		Source:  "clustral " + o.version,
		Manual:  "clustral manual",
		Date:    &o.created,
	}
	var files []entry
	escaped := map[*pflag.Flag]bool{}
	escape := func(f *pflag.Flag) {
		if !escaped[f] {
			escaped[f] = true
			f.Usage = escapeMarkdown(f.Usage)
		}
	}
	var walk func(c *cobra.Command) error
	walk = func(c *cobra.Command) error {
		if c != root && (!c.IsAvailableCommand() || c.IsAdditionalHelpTopicCommand()) {
			return nil
		}
		c.DisableAutoGenTag = true
		// GenMan reads these as markdown, where <cluster> is an HTML
		// tag and vanishes; the examples are code blocks and stay.
		c.Short, c.Long = escapeMarkdown(c.Short), escapeMarkdown(c.Long)
		c.Flags().VisitAll(escape)
		c.InheritedFlags().VisitAll(escape)
		var buf bytes.Buffer
		if err := doc.GenMan(c, header, &buf); err != nil {
			return fmt.Errorf("man page of %s: %w", c.CommandPath(), err)
		}
		files = append(files, entry{
			name: "man/man1/" + strings.ReplaceAll(c.CommandPath(), " ", "-") + ".1",
			mode: 0o644,
			data: buf.Bytes(),
		})
		for _, sub := range c.Commands() {
			if err := walk(sub); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(root); err != nil {
		return nil, err
	}
	slices.SortFunc(files, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	return files, nil
}

// escapeMarkdown keeps angle brackets, as in clustral-<cluster>, literal.
var escapeMarkdown = strings.NewReplacer("<", `\<`, ">", `\>`).Replace

// tarGz writes files under the directory base, root-owned with mtime,
// directories first as they appear.
func tarGz(base string, files []entry, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	dirs := map[string]bool{}
	hdr := func(name string, mode int64, typ byte, size int64) *tar.Header {
		return &tar.Header{Name: name, Mode: mode, Typeflag: typ, Size: size, ModTime: mtime, Uname: "root", Gname: "root", Format: tar.FormatPAX}
	}
	var mkdir func(d string) error
	mkdir = func(d string) error {
		if d == "." || dirs[d] {
			return nil
		}
		if err := mkdir(filepath.Dir(d)); err != nil {
			return err
		}
		dirs[d] = true
		return tw.WriteHeader(hdr(base+"/"+d+"/", 0o755, tar.TypeDir, 0))
	}
	if err := tw.WriteHeader(hdr(base+"/", 0o755, tar.TypeDir, 0)); err != nil {
		return nil, err
	}
	for _, f := range files {
		if err := mkdir(filepath.Dir(f.name)); err != nil {
			return nil, err
		}
		if err := tw.WriteHeader(hdr(base+"/"+f.name, f.mode, tar.TypeReg, int64(len(f.data)))); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
