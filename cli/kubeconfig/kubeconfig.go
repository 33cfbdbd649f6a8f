// Package kubeconfig writes the kubeconfig contexts of `clustral up`: one
// per cluster the user may reach, each through the up's SOCKS5 proxy. It
// edits the user's file with clientcmd and leaves everything it did not
// write alone.
package kubeconfig

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ContextName is the kubeconfig context (and cluster entry) clustral
// writes for a cluster.
func ContextName(cluster string) string { return "clustral-" + cluster }

// Writer edits the user's kubeconfig with clientcmd: the file
// named by Path, or the standard KUBECONFIG/~/.kube/config rules when Path
// is empty. Everything else in the file is preserved.
//
// The contexts it writes hold the SOCKS proxy's credential, so every file
// it writes one into is made mode 0600 (owner only) before the write;
// Tightened, if set, hears of each file whose mode that changed.
type Writer struct {
	Path      string
	Tightened func(file string, was fs.FileMode)
}

func (k Writer) options() *clientcmd.PathOptions {
	po := clientcmd.NewDefaultPathOptions()
	if k.Path != "" {
		po.LoadingRules.ExplicitPath = k.Path
		po.LoadingRules.Precedence = []string{k.Path}
		po.GlobalFile = k.Path
		po.EnvVar = ""
	}
	return po
}

// Load reads the kubeconfig as kubectl sees it: every file the loading
// rules merge.
func (k Writer) Load() (*clientcmdapi.Config, error) {
	return k.options().GetStartingConfig()
}

// File returns the file contexts are written to.
func (k Writer) File() string {
	po := k.options()
	if po.IsExplicitFile() {
		return po.GetExplicitFile()
	}
	return po.GetDefaultFilename()
}

// Context is one cluster's context.
type Context struct {
	Cluster string
	Server  string // https://<cluster>.<mesh domain>
	CA      []byte
	Proxy   *url.URL
	// Login names the user. It is not a credential: kubectl needs some
	// user entry or it prompts for one, and the agent ignores whatever
	// the request claims; identity comes from the WireGuard peer.
	Login string
}

// Set writes ctxs and removes the clustral contexts in remove, in one
// update. A context of the same name that clustral did not write is left
// alone, and an error names it.
//
// It edits as clientcmd.ModifyConfig would: new entries go to the
// default file, removals to the file each entry came from, all under
// clientcmd's lock files; but it reads and writes each file once, where
// ModifyConfig rewrites a file for every entry that changed (three for
// one cluster, thirty for ten).
func (k Writer) Set(ctxs []Context, remove []string) error {
	po := k.options()
	if clientcmd.UseModifyConfigLock {
		unlock, err := lockFiles(po.GetLoadingPrecedence())
		if err != nil {
			return err
		}
		defer unlock()
	}
	cfg, err := po.GetStartingConfig()
	if err != nil {
		return fmt.Errorf("read kubeconfig: %w", err)
	}
	e := edit{files: map[string]*clientcmdapi.Config{}, dirty: map[string]bool{}}
	for _, name := range remove {
		c, ok := cfg.Contexts[name]
		if !ok || !Managed(cfg, name) {
			continue
		}
		if err := e.change(cfg.Clusters[c.Cluster].LocationOfOrigin, po, func(f *clientcmdapi.Config) { delete(f.Clusters, c.Cluster) }); err != nil {
			return err
		}
		if ai := cfg.AuthInfos[c.AuthInfo]; ai != nil {
			if err := e.change(ai.LocationOfOrigin, po, func(f *clientcmdapi.Config) { delete(f.AuthInfos, c.AuthInfo) }); err != nil {
				return err
			}
		}
		if err := e.change(c.LocationOfOrigin, po, func(f *clientcmdapi.Config) { delete(f.Contexts, name) }); err != nil {
			return err
		}
		if cfg.CurrentContext == name {
			if err := e.clearCurrent(po); err != nil {
				return err
			}
		}
	}
	files := map[string]bool{}
	def := po.GetDefaultFilename()
	for _, mc := range ctxs {
		name := ContextName(mc.Cluster)
		if _, exists := cfg.Contexts[name]; exists && !Managed(cfg, name) {
			return fmt.Errorf("kubeconfig already has a context %q that clustral did not write; rename or remove it", name)
		}
		// A new entry goes to the default file; one that came from
		// another file held a credential there too.
		if old := cfg.Clusters[name]; old != nil && old.LocationOfOrigin != "" {
			files[old.LocationOfOrigin] = true
		}
		files[def] = true
		cl := clientcmdapi.NewCluster()
		cl.Server = mc.Server
		cl.CertificateAuthorityData = mc.CA
		cl.ProxyURL = mc.Proxy.String()
		cl.Extensions[extensionName] = &runtime.Unknown{Raw: []byte(`{"managed":true}`), ContentType: runtime.ContentTypeJSON} // marks the entry as ours
		ai := clientcmdapi.NewAuthInfo()
		ai.Username = mc.Login
		ctx := clientcmdapi.NewContext()
		ctx.Cluster = name
		ctx.AuthInfo = name
		err := e.change(def, po, func(f *clientcmdapi.Config) {
			f.Clusters[name] = cl
			f.AuthInfos[name] = ai
			f.Contexts[name] = ctx
		})
		if err != nil {
			return err
		}
	}
	for f := range files {
		if err := k.restrict(f); err != nil {
			return err
		}
	}
	for _, f := range slices.Sorted(maps.Keys(e.dirty)) {
		if err := clientcmd.WriteToFile(*e.files[f], f); err != nil {
			return fmt.Errorf("write kubeconfig %s: %w", f, err)
		}
	}
	for f := range files { // one the write created
		if err := k.restrict(f); err != nil {
			return err
		}
	}
	return nil
}

// edit is one Set's changes: each file it touches, read once, and which
// of them changed.
type edit struct {
	files map[string]*clientcmdapi.Config
	dirty map[string]bool
}

// file returns the content of the kubeconfig file name, read on first
// use; a missing file is empty.
func (e *edit) file(name string) (*clientcmdapi.Config, error) {
	if f, ok := e.files[name]; ok {
		return f, nil
	}
	f, err := clientcmd.LoadFromFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		f, err = clientcmdapi.NewConfig(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read kubeconfig %s: %w", name, err)
	}
	e.files[name] = f
	return f, nil
}

// change applies do to the kubeconfig file name (the default file if
// empty) and marks it for writing.
func (e *edit) change(name string, po *clientcmd.PathOptions, do func(*clientcmdapi.Config)) error {
	if name == "" {
		name = po.GetDefaultFilename()
	}
	f, err := e.file(name)
	if err != nil {
		return err
	}
	do(f)
	e.dirty[name] = true
	return nil
}

// clearCurrent clears the current context where clientcmd would: in the
// explicit file, else in the first file that sets one.
func (e *edit) clearCurrent(po *clientcmd.PathOptions) error {
	if po.IsExplicitFile() {
		return e.change(po.GetExplicitFile(), po, func(f *clientcmdapi.Config) { f.CurrentContext = "" })
	}
	for _, name := range po.GetLoadingPrecedence() {
		f, err := e.file(name)
		if err != nil {
			return err
		}
		if f.CurrentContext != "" {
			f.CurrentContext = ""
			e.dirty[name] = true
			return nil
		}
	}
	return nil
}

// lockFiles takes clientcmd's lock on each file (the file name with
// ".lock", made exclusively), in sorted order as clientcmd.ModifyConfig
// does, so neither edits a file while the other is at it. The returned
// func releases them.
func lockFiles(files []string) (unlock func(), err error) {
	files = slices.Sorted(slices.Values(files))
	var held []string
	unlock = func() {
		for _, l := range held {
			os.Remove(l)
		}
	}
	for _, f := range files {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			unlock()
			return nil, fmt.Errorf("kubeconfig %s: %w", f, err)
		}
		l := f + ".lock"
		lf, err := os.OpenFile(l, os.O_CREATE|os.O_EXCL, 0)
		if errors.Is(err, fs.ErrExist) {
			unlock()
			return nil, fmt.Errorf("kubeconfig %s is being edited by another program: %s exists (if none is, remove it)", f, l)
		}
		if err != nil {
			unlock()
			return nil, fmt.Errorf("lock kubeconfig %s: %w", f, err)
		}
		lf.Close()
		held = append(held, l)
	}
	return unlock, nil
}

// restrict makes file mode 0600 if it exists with any access for group or
// others.
func (k Writer) restrict(file string) error {
	fi, err := os.Stat(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", file, err)
	}
	if fi.Mode().Perm()&0o077 == 0 {
		return nil
	}
	if err := os.Chmod(file, 0o600); err != nil {
		return fmt.Errorf("kubeconfig %s is mode %04o and will hold the SOCKS proxy credential, but it cannot be made 0600: %w (chmod 600 it yourself, or pass --kubeconfig with a file of your own)", file, fi.Mode().Perm(), err)
	}
	if k.Tightened != nil {
		k.Tightened(file, fi.Mode().Perm())
	}
	return nil
}

// extensionName marks the kubeconfig entries clustral owns.
const extensionName = "clustral.dev/managed"

// Managed reports whether the context ctxName in cfg is one clustral
// wrote.
func Managed(cfg *clientcmdapi.Config, ctxName string) bool {
	c, ok := cfg.Contexts[ctxName]
	if !ok {
		return false
	}
	cl, ok := cfg.Clusters[c.Cluster]
	return ok && cl.Extensions[extensionName] != nil
}

// Ours lists the clustral contexts in the kubeconfig.
func (k Writer) Ours() ([]string, error) {
	cfg, err := k.options().GetStartingConfig()
	if err != nil {
		return nil, err
	}
	var out []string
	for name := range cfg.Contexts {
		if Managed(cfg, name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}
