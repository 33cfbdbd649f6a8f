package cli

import (
	"bytes"
	"flag"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

var updateDocs = flag.Bool("update-docs", false, "rewrite docs/cli.md from the commands")

// TestCLIReference keeps docs/cli.md in step with the commands: run
// `go test ./cli -run TestCLIReference -update-docs` after changing one.
func TestCLIReference(t *testing.T) {
	root := newRootCmd(strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{})
	var buf bytes.Buffer
	buf.WriteString("# clustral CLI reference\n\nGenerated from the commands by `go test ./cli -run TestCLIReference -update-docs`; do not edit.\n\n")
	var walk func(c *cobra.Command) error
	walk = func(c *cobra.Command) error {
		if c.Hidden || c.Name() == "help" {
			return nil
		}
		c.DisableAutoGenTag = true
		var one bytes.Buffer
		if err := doc.GenMarkdownCustom(c, &one, func(name string) string {
			return "#" + strings.TrimSuffix(strings.ReplaceAll(name, "_", "-"), ".md")
		}); err != nil {
			return err
		}
		buf.Write(bytes.ReplaceAll(one.Bytes(), []byte("\n## "), []byte("\n## ")))
		buf.WriteString("\n")
		for _, sub := range c.Commands() {
			if err := walk(sub); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(root); err != nil {
		t.Fatal(err)
	}
	testkit.Golden(t, filepath.Join("..", "docs", "cli.md"), buf.Bytes(), *updateDocs, "go test ./cli -run TestCLIReference -update-docs")
}

// TestEveryCommandHasExamples: every runnable command's help shows how
// to use it.
func TestEveryCommandHasExamples(t *testing.T) {
	root := newRootCmd(strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		if c.Runnable() && c.Example == "" {
			t.Errorf("%s has no example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}
