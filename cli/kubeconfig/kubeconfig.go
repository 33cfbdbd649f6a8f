// Package kubeconfig writes the kubeconfig contexts of `clustral up`: one
// per cluster the user may reach, each through the up's SOCKS5 proxy. It
// edits the user's file with clientcmd and leaves everything it did not
// write alone.
package kubeconfig

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
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
func (k Writer) Set(ctxs []Context, remove []string) error {
	po := k.options()
	cfg, err := po.GetStartingConfig()
	if err != nil {
		return fmt.Errorf("read kubeconfig: %w", err)
	}
	for _, name := range remove {
		if c, ok := cfg.Contexts[name]; ok && Managed(cfg, name) {
			delete(cfg.Clusters, c.Cluster)
			delete(cfg.AuthInfos, c.AuthInfo)
			delete(cfg.Contexts, name)
			if cfg.CurrentContext == name {
				cfg.CurrentContext = ""
			}
		}
	}
	files := map[string]bool{}
	for _, mc := range ctxs {
		name := ContextName(mc.Cluster)
		if _, exists := cfg.Contexts[name]; exists && !Managed(cfg, name) {
			return fmt.Errorf("kubeconfig already has a context %q that clustral did not write; rename or remove it", name)
		}
		// clientcmd writes an entry back where it came from, and a new
		// one into the default file.
		if old := cfg.Clusters[name]; old != nil && old.LocationOfOrigin != "" {
			files[old.LocationOfOrigin] = true
		}
		files[po.GetDefaultFilename()] = true
		cl := clientcmdapi.NewCluster()
		cl.Server = mc.Server
		cl.CertificateAuthorityData = mc.CA
		cl.ProxyURL = mc.Proxy.String()
		cl.Extensions[extensionName] = &runtime.Unknown{Raw: []byte(`{"managed":true}`), ContentType: runtime.ContentTypeJSON} // marks the entry as ours
		cfg.Clusters[name] = cl
		ai := clientcmdapi.NewAuthInfo()
		ai.Username = mc.Login
		cfg.AuthInfos[name] = ai
		ctx := clientcmdapi.NewContext()
		ctx.Cluster = name
		ctx.AuthInfo = name
		cfg.Contexts[name] = ctx
	}
	for f := range files {
		if err := k.restrict(f); err != nil {
			return err
		}
	}
	if err := clientcmd.ModifyConfig(po, *cfg, false); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", k.File(), err)
	}
	for f := range files { // one clientcmd created
		if err := k.restrict(f); err != nil {
			return err
		}
	}
	return nil
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
