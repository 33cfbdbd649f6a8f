package deploy

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDockerfile checks the image recipe against the repository: the Go
// builder is new enough for go.mod, the version reaches the same linker
// variables the Makefile sets, and the image runs as nonroot.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile(repoPath("deploy", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)

	from := regexp.MustCompile(`(?m)^FROM\s+(?:--platform=\S+\s+)?(\S+)`).FindAllStringSubmatch(df, -1)
	if len(from) != 2 {
		t.Fatalf("%d stages, want a builder and a final stage", len(from))
	}
	builder, final := from[0][1], from[1][1]
	if final != "gcr.io/distroless/static:nonroot" {
		t.Errorf("final stage %s, want gcr.io/distroless/static:nonroot", final)
	}
	tag, ok := strings.CutPrefix(builder, "golang:")
	if !ok {
		t.Fatalf("builder %s is not golang", builder)
	}
	gm, err := os.ReadFile(repoPath("go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gm)
	if goLine == nil {
		t.Fatal("no go directive in go.mod")
	}
	// golang:1.N is the newest 1.N.x release, so the minor version must match.
	if goVer := string(goLine[1]); !strings.HasPrefix(goVer+".", tag+".") {
		t.Errorf("builder golang:%s does not match go.mod's go %s (the image sets GOTOOLCHAIN=local)", tag, goVer)
	}

	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "./cli/clustral", "USER 65532:65532",
		`org.opencontainers.image.version="${VERSION}"`, `org.opencontainers.image.revision="${COMMIT}"`} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %s", want)
		}
	}
	// The image and `make build` stamp the same variables.
	mk, err := os.ReadFile(repoPath("Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	xs := regexp.MustCompile(`-X (\S+)=`).FindAllStringSubmatch(string(mk), -1)
	if len(xs) == 0 {
		t.Fatal("no -X in the Makefile's LDFLAGS")
	}
	for _, x := range xs {
		if !strings.Contains(df, "-X "+x[1]+"=") {
			t.Errorf("Dockerfile does not set %s like the Makefile", x[1])
		}
	}
}

// TestMakeDockerImage checks the command `make docker-image` runs (there
// may be no Docker engine here, so it is printed, not run). `make image`,
// which needs no engine, is tested in integration/cmd/image.
func TestMakeDockerImage(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, "make", "--no-print-directory", "-n", "docker-image", "VERSION=v9.8.7", "COMMIT=abc1234")
	c.Dir = root
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n docker-image: %v\n%s", err, out)
	}
	cmd := strings.TrimSpace(string(out))
	for _, want := range []string{"docker build ", "-f deploy/Dockerfile", "--build-arg VERSION=v9.8.7", "--build-arg COMMIT=abc1234", "-t ghcr.io/clustral/clustral:v9.8.7"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("make docker-image runs %q, which lacks %q", cmd, want)
		}
	}
	if !strings.HasSuffix(cmd, " .") {
		t.Errorf("make docker-image runs %q: the build context must be the repository root", cmd)
	}
}

// TestDockerignore checks that the build context keeps every file
// `go build ./cli/clustral` reads.
func TestDockerignore(t *testing.T) {
	b, err := os.ReadFile(repoPath("deploy", "Dockerfile.dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var rules []string
	for line := range strings.Lines(string(b)) {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			rules = append(rules, l)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, "go", "list", "-deps",
		"-f", `{{if .Module}}{{if eq .Module.Path "github.com/clustral/clustral"}}{{$d := .Dir}}{{range .GoFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{range .EmbedFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{end}}{{end}}`,
		"./cli/clustral")
	c.Dir = root
	out, err := c.Output()
	if err != nil {
		t.Skipf("go list ./cli/clustral failed (the command does not build now): %v", err)
	}
	files := []string{"go.mod", "go.sum"}
	for line := range strings.Lines(string(out)) {
		rel, err := filepath.Rel(root, strings.TrimSpace(line))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, rel)
	}
	if len(files) < 10 {
		t.Fatalf("only %d files listed for ./cli/clustral", len(files))
	}
	for _, f := range files {
		if ignored(rules, f) {
			t.Errorf("%s is needed by go build ./cli/clustral but excluded from the build context", f)
		}
	}
	for _, f := range []string{".git/config", "integration/go.mod", "bin/clustral", "deploy/agent/overlays/example/join-token", "cli/main_test.go"} {
		if !ignored(rules, f) {
			t.Errorf("%s is sent to the Docker build context", f)
		}
	}
}

// ignored applies .dockerignore rules to a slash-separated relative path:
// the last matching rule wins, "!" re-includes, a rule matching a
// directory covers everything below it, and a leading "**/" matches at
// any depth.
func ignored(rules []string, path string) bool {
	parts := strings.Split(path, "/")
	ign := false
	for _, r := range rules {
		pat, neg := strings.CutPrefix(r, "!")
		pat = strings.TrimSuffix(pat, "/")
		for i := 1; i <= len(parts); i++ {
			if matchPattern(pat, parts[:i]) {
				ign = !neg
				break
			}
		}
	}
	return ign
}

func matchPattern(pat string, parts []string) bool {
	if rest, ok := strings.CutPrefix(pat, "**/"); ok {
		for j := range parts {
			if ok, _ := filepath.Match(rest, strings.Join(parts[j:], "/")); ok {
				return true
			}
		}
		return false
	}
	ok, _ := filepath.Match(pat, strings.Join(parts, "/"))
	return ok
}
