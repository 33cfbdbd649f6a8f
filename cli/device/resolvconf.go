package device

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// The lines that open and close the block the resolv.conf method adds at
// the top of the file. Every line between them belongs to clustral.
const (
	resolvBegin = "# clustral begin: mesh DNS, removed by clustral down"
	resolvEnd   = "# clustral end"
)

// withResolvBlock returns conf with clustral's block at its top, naming
// server as the first nameserver for the mesh domain. A block left in
// conf (by a run whose record is lost) is replaced, not repeated.
func withResolvBlock(conf []byte, server, domain string) []byte {
	conf, _ = withoutResolvBlock(conf, server)
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\n", resolvBegin)
	fmt.Fprintf(&b, "# %s names are answered at %s; other names are refused there, so resolvers ask the next nameserver.\n", domain, server)
	fmt.Fprintf(&b, "nameserver %s\n", server)
	fmt.Fprintf(&b, "%s\n", resolvEnd)
	b.Write(conf)
	return b.Bytes()
}

// withoutResolvBlock returns conf without clustral's blocks, and whether
// there was one; every other line is kept as it is, so edits others made
// while clustral was up stay. A block whose end line is gone loses only
// its first line and a nameserver line for server right after it.
func withoutResolvBlock(conf []byte, server string) ([]byte, bool) {
	lines := bytes.SplitAfter(conf, []byte("\n"))
	var out bytes.Buffer
	found := false
	for i := 0; i < len(lines); i++ {
		if trimLine(lines[i]) != resolvBegin {
			out.Write(lines[i])
			continue
		}
		found = true
		end := -1
		for j := i + 1; j < len(lines); j++ {
			if trimLine(lines[j]) == resolvEnd {
				end = j
				break
			}
		}
		switch {
		case end >= 0:
			i = end
		case i+1 < len(lines) && trimLine(lines[i+1]) == "nameserver "+server:
			i++
		}
	}
	return out.Bytes(), found
}

func trimLine(l []byte) string { return strings.TrimSpace(string(l)) }

// resolvConfEdit is the resolv.conf method's change, as recorded in
// DNSFile before the file is touched.
type resolvConfEdit struct {
	// File is the file edited (e.g. /etc/resolv.conf).
	File string `json:"file"`
	// Original is its content before, kept so that nothing is lost even
	// if the file is gone at restore; Created says there was no file.
	Original string `json:"original"`
	Created  bool   `json:"created,omitempty"`
}

// addResolvConf puts clustral's block at the top of file and returns the
// edit to record. record is called with the edit before the file is
// written, so that a crash in between still finds it.
func addResolvConf(file, server, domain string, record func(resolvConfEdit) error) error {
	orig, err := os.ReadFile(file)
	created := errors.Is(err, fs.ErrNotExist)
	if err != nil && !created {
		return fmt.Errorf("read %s: %w", file, err)
	}
	if n := countNameservers(orig); n >= 3 {
		// glibc reads only the first three nameservers (MAXNS).
		return fmt.Errorf("%s already names %d nameservers and the C library reads only 3, so clustral's would push one out: remove one, or run clustral up --tun --dns-method resolved (systemd-resolved) or --dns=false", file, n)
	}
	if err := record(resolvConfEdit{File: file, Original: string(orig), Created: created}); err != nil {
		return err
	}
	return writeInPlace(file, withResolvBlock(orig, server, domain))
}

// countNameservers counts the nameserver lines of conf outside
// clustral's block.
func countNameservers(conf []byte) int {
	conf, _ = withoutResolvBlock(conf, "")
	n := 0
	for l := range bytes.Lines(conf) {
		if f := strings.Fields(string(l)); len(f) > 1 && f[0] == "nameserver" {
			n++
		}
	}
	return n
}

// removeResolvConf takes clustral's block out of the edited file, keeping
// what others changed meanwhile. A file that is gone gets its original
// content back; a file clustral created and that holds nothing else is
// removed. It reports what it did.
func removeResolvConf(e resolvConfEdit, server string) (string, error) {
	cur, err := os.ReadFile(e.File)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if e.Created {
			return e.File + " is gone, as before clustral up", nil
		}
		if err := writeInPlace(e.File, []byte(e.Original)); err != nil {
			return "", err
		}
		return e.File + " was gone; restored its content from before clustral up", nil
	case err != nil:
		return "", fmt.Errorf("read %s: %w", e.File, err)
	}
	rest, found := withoutResolvBlock(cur, server)
	if !found {
		return e.File + " no longer holds clustral's lines (rewritten by another program); left as it is", nil
	}
	if e.Created && len(bytes.TrimSpace(rest)) == 0 {
		if err := os.Remove(e.File); err != nil {
			return "", err
		}
		return "removed " + e.File + ", which clustral up had created", nil
	}
	if err := writeInPlace(e.File, rest); err != nil {
		return "", err
	}
	return "removed clustral's nameserver from " + e.File, nil
}

// writeInPlace overwrites file's content, keeping the file itself: its
// mode and owner, and a bind mount on it (containers and `ip netns exec`
// mount their own resolv.conf, where a rename fails). A symlink is
// followed. A missing file is created 0644, as resolv.conf is.
func writeInPlace(file string, data []byte) error {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", file, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", file, err)
	}
	return f.Close()
}
