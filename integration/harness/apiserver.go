package harness

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Identity is a static bearer-token user of the apiserver. The apiserver
// reads its token file only at start, so identities are fixed by
// APIServerOptions.
type Identity struct {
	Token  string // the bearer token; must be unique
	User   string
	UID    string // defaults to User
	Groups []string
}

// APIServerOptions configure StartAPIServer. The zero value is valid.
type APIServerOptions struct {
	// Identities are extra static-token users, e.g. an "agent". They have
	// no permissions beyond system:authenticated unless bound by RBAC.
	Identities []Identity
	// ServiceClusterIPRange defaults to 10.96.0.0/16.
	ServiceClusterIPRange string
	// ExtraArgs are appended to the kube-apiserver command line.
	ExtraArgs []string
	// TracingEndpoint, if set, turns on the apiserver's tracing
	// (--tracing-config-file): it exports its spans over OTLP/gRPC to this
	// host:port (e.g. an OTLPReceiver's Addr). It starts no trace of its
	// own (samplingRatePerMillion 0): it records a request only under a
	// sampled traceparent.
	TracingEndpoint string
}

// AdminUser is the name of the apiserver's admin identity, a member of
// system:masters.
const AdminUser = "clustral-admin"

// APIServer is a kube-apiserver serving HTTPS on 127.0.0.1 with RBAC,
// static-token authentication and a generated CA.
type APIServer struct {
	// URL is the HTTPS base URL, e.g. https://127.0.0.1:40125.
	URL string
	// CA signs the serving certificate and is trusted for client
	// certificates (--client-ca-file).
	CA *CA
	// CAPEM is CA.CertPEM.
	CAPEM []byte
	// AdminToken is the bearer token of AdminUser (group system:masters).
	AdminToken string
	// Kubeconfig is the path of a kubeconfig for the admin, context
	// "admin".
	Kubeconfig string
	// ServiceAccountKey is the path of the PEM private key signing
	// service-account tokens.
	ServiceAccountKey string
	// LogPath is the file receiving kube-apiserver's output.
	LogPath string

	dir  string
	proc *Process
}

// StartAPIServer starts kube-apiserver against etcdURL, with its files
// under dir, and waits for /readyz. The caller must call Close.
func StartAPIServer(ctx context.Context, dir, etcdURL string, opts APIServerOptions) (*APIServer, error) {
	bin, dir, ca, err := tlsComponentDir("kube-apiserver", dir, "clustral-test-kube-ca")
	if err != nil {
		return nil, err
	}
	a := &APIServer{
		CA:         ca,
		CAPEM:      ca.CertPEM,
		AdminToken: randomToken(16),
		LogPath:    filepath.Join(dir, "kube-apiserver.log"),
		dir:        dir,
	}
	files := map[string]string{
		"ca":        filepath.Join(dir, "ca.crt"),
		"cert":      filepath.Join(dir, "apiserver.crt"),
		"key":       filepath.Join(dir, "apiserver.key"),
		"kcert":     filepath.Join(dir, "kubelet-client.crt"),
		"kkey":      filepath.Join(dir, "kubelet-client.key"),
		"sa":        filepath.Join(dir, "sa.key"),
		"sapub":     filepath.Join(dir, "sa.pub"),
		"tokens":    filepath.Join(dir, "tokens.csv"),
		"certdir":   filepath.Join(dir, "certs"),
		"kubeadmin": filepath.Join(dir, "admin.kubeconfig"),
		"tracing":   filepath.Join(dir, "tracing.yaml"),
	}
	a.ServiceAccountKey = files["sa"]
	a.Kubeconfig = files["kubeadmin"]

	cert, key, err := ca.Issue("kube-apiserver", nil, []string{"127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}, false)
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver: %w", err)
	}
	kcert, kkey, err := ca.Issue("kube-apiserver-kubelet-client", []string{"system:masters"}, nil, true)
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver: %w", err)
	}
	saKey, saPub, err := newSigningKeyPEM()
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver: %w", err)
	}
	ids := append([]Identity{{Token: a.AdminToken, User: AdminUser, Groups: []string{"system:masters"}}}, opts.Identities...)
	tokens, err := tokenFile(ids)
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver: %w", err)
	}
	toWrite := map[string][]byte{
		files["ca"]: ca.CertPEM, files["cert"]: cert, files["key"]: key,
		files["kcert"]: kcert, files["kkey"]: kkey,
		files["sa"]: saKey, files["sapub"]: saPub, files["tokens"]: tokens,
	}
	var extra []string
	if opts.TracingEndpoint != "" {
		toWrite[files["tracing"]] = fmt.Appendf(nil, "apiVersion: apiserver.config.k8s.io/v1\nkind: TracingConfiguration\nendpoint: %q\nsamplingRatePerMillion: 0\n", opts.TracingEndpoint)
		extra = append(extra, "--tracing-config-file="+files["tracing"])
	}
	if err := writeFiles(toWrite); err != nil {
		return nil, fmt.Errorf("start kube-apiserver: %w", err)
	}
	svcRange := opts.ServiceClusterIPRange
	if svcRange == "" {
		svcRange = "10.96.0.0/16"
	}

	err = onFreePorts(1, func(ports []int) error {
		url := "https://" + hostPort(ports[0])
		args := []string{
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			fmt.Sprintf("--secure-port=%d", ports[0]),
			"--endpoint-reconciler-type=none",
			"--authorization-mode=RBAC",
			"--token-auth-file=" + files["tokens"],
			"--client-ca-file=" + files["ca"],
			"--tls-cert-file=" + files["cert"],
			"--tls-private-key-file=" + files["key"],
			"--cert-dir=" + files["certdir"],
			"--kubelet-client-certificate=" + files["kcert"],
			"--kubelet-client-key=" + files["kkey"],
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + files["sapub"],
			"--service-account-signing-key-file=" + files["sa"],
			"--service-cluster-ip-range=" + svcRange,
			"--etcd-servers=" + etcdURL,
			"--profiling=false",
		}
		args = append(args, extra...)
		args = append(args, opts.ExtraArgs...)
		p, err := StartProcess("kube-apiserver", bin, args, EnvironWithout("KUBECONFIG="), a.LogPath)
		if err != nil {
			return err
		}
		hc := ca.HTTPClient()
		hdr := http.Header{"Authorization": {"Bearer " + a.AdminToken}}
		if err := p.waitReady(ctx, 2*time.Minute, answersOK(hc, url+"/readyz", hdr)); err != nil {
			return err
		}
		a.URL, a.proc = url, p
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver: %w", err)
	}
	if err := a.WriteKubeconfig(a.Kubeconfig, "admin", a.AdminToken); err != nil {
		a.Close()
		return nil, fmt.Errorf("start kube-apiserver: %w", err)
	}
	return a, nil
}

// tokenFile renders identities in the --token-auth-file CSV format:
// token,user,uid,"group1,group2".
func tokenFile(ids []Identity) ([]byte, error) {
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	seen := map[string]bool{}
	for _, id := range ids {
		if id.Token == "" || id.User == "" {
			return nil, fmt.Errorf("identity %q: token and user are required", id.User)
		}
		if seen[id.Token] {
			return nil, fmt.Errorf("identity %q: duplicate token", id.User)
		}
		seen[id.Token] = true
		uid := id.UID
		if uid == "" {
			uid = id.User
		}
		rec := []string{id.Token, id.User, uid}
		if len(id.Groups) > 0 {
			rec = append(rec, strings.Join(id.Groups, ","))
		}
		if err := w.Write(rec); err != nil {
			return nil, err
		}
	}
	w.Flush()
	return buf.Bytes(), w.Error()
}

// Pid returns kube-apiserver's process id.
func (a *APIServer) Pid() int { return a.proc.Pid() }

// Config returns a rest.Config for the admin. Each call returns a new
// copy the caller may modify.
func (a *APIServer) Config() *rest.Config { return a.ConfigFor(a.AdminToken) }

// ConfigFor returns a rest.Config authenticating with the bearer token
// (e.g. an Identity's), trusting the apiserver's CA.
func (a *APIServer) ConfigFor(token string) *rest.Config {
	return &rest.Config{
		Host:            a.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: a.CAPEM},
		QPS:             100,
		Burst:           200,
	}
}

// Client returns a clientset for the admin.
func (a *APIServer) Client() *kubernetes.Clientset {
	return kubernetes.NewForConfigOrDie(a.Config())
}

// ClientFor returns a clientset authenticating with token.
func (a *APIServer) ClientFor(token string) *kubernetes.Clientset {
	return kubernetes.NewForConfigOrDie(a.ConfigFor(token))
}

// WriteKubeconfig writes a kubeconfig to path with one cluster, user and
// context, all named name, using token, and makes it the current context.
func (a *APIServer) WriteKubeconfig(path, name, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: a.URL, CertificateAuthorityData: a.CAPEM}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	cfg.CurrentContext = name
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// Close stops kube-apiserver.
func (a *APIServer) Close() error {
	a.proc.Stop()
	return nil
}
