package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/clustral/clustral/agent"
	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

// This file runs clustral itself: the coordinator, agents and users with
// their own config directories, for the tests, the demo and the bench.

// TempClustral makes a temporary directory named after prefix and returns
// it with the clustral binary under test (ClustralBinary, which may build
// into it). The caller removes dir; on error there is nothing to remove.
func TempClustral(prefix string) (dir, bin string, err error) {
	dir, err = os.MkdirTemp("", prefix)
	if err != nil {
		return "", "", err
	}
	dir = filepath.Clean(dir)
	if bin, err = ClustralBinary(dir); err != nil {
		os.RemoveAll(dir)
		return "", "", err
	}
	return dir, bin, nil
}

// ClustralBinary returns the clustral binary under test: $CLUSTRAL_BIN if
// set (make builds it), otherwise one built from the repository into dir.
func ClustralBinary(dir string) (string, error) {
	if b := os.Getenv("CLUSTRAL_BIN"); b != "" {
		return b, nil
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	out := filepath.Join(dir, "clustral")
	cmd := exec.Command("go", "build", "-o", out, "./cli/clustral")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build clustral: %v\n%s", err, b)
	}
	return out, nil
}

// Coordinator is a running `clustral coordinator` on loopback, plain HTTP.
type Coordinator struct {
	URL  string
	Dir  string
	Proc *Process

	bin  string
	args []string
	env  []string
}

// CoordinatorOptions configure StartCoordinator.
type CoordinatorOptions struct {
	Port         int // 0 picks a free port
	Dex          *Dex
	ClientID     string
	ClientSecret string
	Admins       []string
	// AllowEmailDomains say who may log in (--allow-email-domain); nil
	// means example.com, the domain of every test user. ExtraArgs with an
	// --allow- flag of their own replace this default.
	AllowEmailDomains []string
	ExtraArgs         []string
}

// StartCoordinator starts a coordinator with its data in dir and waits
// until it is ready.
func StartCoordinator(ctx context.Context, bin, dir string, o CoordinatorOptions) (*Coordinator, error) {
	if o.Port == 0 {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		o.Port = p
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	c := &Coordinator{URL: "http://127.0.0.1:" + strconv.Itoa(o.Port), Dir: dir, bin: bin}
	c.args = []string{"coordinator",
		"--listen", "127.0.0.1:" + strconv.Itoa(o.Port),
		"--data-dir", filepath.Join(dir, "data"),
		"--log-format", "text",
	}
	for _, a := range o.Admins {
		c.args = append(c.args, "--admin", a)
	}
	if !slices.ContainsFunc(o.ExtraArgs, func(a string) bool { return strings.HasPrefix(a, "--allow-") }) {
		domains := o.AllowEmailDomains
		if domains == nil {
			domains = []string{"example.com"}
		}
		for _, d := range domains {
			c.args = append(c.args, "--allow-email-domain", d)
		}
	}
	c.env = os.Environ()
	if o.Dex != nil {
		caFile := filepath.Join(dir, "oidc-ca.pem")
		if err := os.WriteFile(caFile, o.Dex.CAPEM, 0o600); err != nil {
			return nil, err
		}
		c.args = append(c.args, "--oidc-issuer", o.Dex.Issuer, "--oidc-client-id", o.ClientID, "--oidc-ca-file", caFile)
		c.env = append(c.env, "CLUSTRAL_OIDC_CLIENT_SECRET="+o.ClientSecret)
	}
	// Endpoint discovery's default port (3478) is shared by every
	// coordinator on the host; test coordinators running side by side
	// each take a free one, so none of them runs without it.
	if !slices.ContainsFunc(o.ExtraArgs, func(a string) bool { return strings.HasPrefix(a, "--stun-listen") }) {
		c.args = append(c.args, "--stun-listen", "127.0.0.1:0")
	}
	c.args = append(c.args, o.ExtraArgs...)
	return c, c.Start(ctx)
}

// Start (re)starts the coordinator process with the same data.
func (c *Coordinator) Start(ctx context.Context) error {
	p, err := StartProcess("coordinator", c.bin, c.args, c.env, filepath.Join(c.Dir, "coordinator.log"))
	if err != nil {
		return err
	}
	c.Proc = p
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := p.WaitHTTP(wctx, c.URL+"/readyz"); err != nil {
		p.Stop()
		return fmt.Errorf("coordinator not ready: %w", err)
	}
	return nil
}

// StopAtEnd stops c when t ends, whichever process it runs then, and
// logs the last lines of its log if t failed.
func (c *Coordinator) StopAtEnd(t testing.TB, lines int) {
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			t.Logf("coordinator %s log:\n%s", c.URL, c.Proc.Tail(lines))
		}
	})
}

// Stop stops the coordinator.
func (c *Coordinator) Stop() {
	if c.Proc != nil {
		c.Proc.Stop()
	}
}

// Replicas are coordinators serving one mesh from one etcd prefix, as an
// HA deployment runs them. Coords[0] listens on the port the options
// name, if any; the others listen on ports of their own.
type Replicas struct {
	Etcd   *EtcdCluster
	Coords []*Coordinator
}

// URLs returns the replicas' URLs in order.
func (r *Replicas) URLs() []string {
	out := make([]string, len(r.Coords))
	for i, c := range r.Coords {
		out[i] = c.URL
	}
	return out
}

// StartReplicas starts a three-member etcd cluster and n coordinator
// replicas on it (--store etcd) with their files under dir, each with o
// (o.Port for the first), sharing the first one's audit checkpoint key
// as a deployment does. On error it stops what it started; otherwise the
// caller must call Close.
func StartReplicas(ctx context.Context, bin, dir string, n int, o CoordinatorOptions) (*Replicas, error) {
	edir := filepath.Join(dir, "etcd")
	if err := os.MkdirAll(edir, 0o700); err != nil {
		return nil, err
	}
	ec, err := StartEtcdCluster(ctx, edir, 3)
	if err != nil {
		return nil, err
	}
	r := &Replicas{Etcd: ec}
	o.ExtraArgs = append([]string{"--store", "etcd", "--etcd-endpoints", strings.Join(ec.URLs, ",")}, o.ExtraArgs...)
	var key []byte
	for i := range n {
		ro := o
		if i > 0 {
			ro.Port = 0
		}
		rdir := filepath.Join(dir, "replica-"+strconv.Itoa(i))
		// Each replica takes the others' relay links on a port of its
		// own, and announces it.
		lp, err := FreePort()
		if err != nil {
			r.Close()
			return nil, err
		}
		ro.ExtraArgs = append([]string{"--replica-listen", "127.0.0.1:" + strconv.Itoa(lp)}, ro.ExtraArgs...)
		if key != nil {
			if err := os.MkdirAll(filepath.Join(rdir, "data"), 0o700); err != nil {
				r.Close()
				return nil, err
			}
			if err := os.WriteFile(filepath.Join(rdir, "data", auditlog.KeyFile), key, 0o600); err != nil {
				r.Close()
				return nil, err
			}
		}
		c, err := StartCoordinator(ctx, bin, rdir, ro)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("replica %d: %w", i, err)
		}
		r.Coords = append(r.Coords, c)
		if key == nil {
			if key, err = os.ReadFile(filepath.Join(rdir, "data", auditlog.KeyFile)); err != nil {
				r.Close()
				return nil, err
			}
		}
	}
	return r, nil
}

// Close stops the replicas and then etcd.
func (r *Replicas) Close() {
	for _, c := range r.Coords {
		c.Stop()
	}
	r.Etcd.Close()
}

// Agent is a running `clustral agent`.
type Agent struct {
	Proc      *Process
	HealthURL string
}

// StartAgent runs an agent with joinToken against the apiserver of
// kubeconfig and waits until it is connected to the mesh.
func StartAgent(ctx context.Context, bin, dir, coordURL, joinToken, kubeconfig string, extraArgs ...string) (*Agent, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	tf := filepath.Join(dir, "join-token")
	if err := os.WriteFile(tf, []byte(joinToken), 0o600); err != nil {
		return nil, err
	}
	hp, err := FreePort()
	if err != nil {
		return nil, err
	}
	// Each agent has its own audit spool (the agent locks it); an
	// --audit-dir in extraArgs comes later and wins.
	args := append([]string{"agent", "--coordinator", coordURL, "--join-token-file", tf, "--kubeconfig", kubeconfig,
		"--health-listen", "127.0.0.1:" + strconv.Itoa(hp), "--log-format", "text", "--audit-dir", filepath.Join(dir, "audit")}, extraArgs...)
	p, err := StartProcess("agent", bin, args, os.Environ(), filepath.Join(dir, "agent.log"))
	if err != nil {
		return nil, err
	}
	a := &Agent{Proc: p, HealthURL: "http://127.0.0.1:" + strconv.Itoa(hp)}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := p.WaitHTTP(wctx, a.HealthURL+"/readyz"); err != nil {
		p.Stop()
		return nil, fmt.Errorf("agent not ready: %w", err)
	}
	return a, nil
}

// User is one person using the clustral CLI, with their own config
// directory and kubeconfig.
type User struct {
	DexUser
	Bin        string
	Dir        string
	Kubeconfig string
}

// NewUser prepares a user whose files live in dir.
func NewUser(bin, dir string, d DexUser) *User {
	return &User{DexUser: d, Bin: bin, Dir: dir, Kubeconfig: filepath.Join(dir, "kubeconfig")}
}

// Environ is the environment the user's clustral and kubectl run with.
func (u *User) Environ() []string {
	return append(EnvironWithout("KUBECONFIG=", "CLUSTRAL_"),
		"CLUSTRAL_CONFIG_DIR="+filepath.Join(u.Dir, "config"),
		ownerEntry,
		"KUBECONFIG="+u.Kubeconfig,
		"NO_COLOR=1",
	)
}

// Run runs `clustral args...` as the user.
func (u *User) Run(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, u.Bin, args...)
	cmd.Env = u.Environ()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Run()
	if err != nil {
		err = fmt.Errorf("clustral %v: %w\nstdout: %s\nstderr: %s", args, err, o.String(), e.String())
	}
	return o.String(), e.String(), err
}

// LoginWithToken logs the user in non-interactively: an ID token from Dex
// (password grant, as clientID) exchanged with --id-token-file. extraArgs
// are added to `clustral login`.
func (u *User) LoginWithToken(ctx context.Context, dex *Dex, clientID, secret, coordURL string, extraArgs ...string) error {
	ot, err := dex.PasswordToken(ctx, DexClient{ID: clientID, Secret: secret}, u.Email, u.Password)
	if err != nil {
		return err
	}
	tok, _ := ot.Extra("id_token").(string)
	if tok == "" {
		return errors.New("dex returned no id_token")
	}
	f := filepath.Join(u.Dir, "id-token")
	if err := os.MkdirAll(u.Dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(f, []byte(tok), 0o600); err != nil {
		return err
	}
	_, _, err = u.Run(ctx, append([]string{"login", coordURL, "--id-token-file", f}, extraArgs...)...)
	return err
}

// Up runs `clustral up` writing contexts into the user's kubeconfig.
func (u *User) Up(ctx context.Context) error {
	_, _, err := u.Run(ctx, "up", "--kubeconfig", u.Kubeconfig)
	return err
}

// Down runs `clustral down`.
func (u *User) Down(ctx context.Context) error {
	_, _, err := u.Run(ctx, "down")
	return err
}

// Kubectl returns a kubectl runner with the user's kubeconfig.
func (u *User) Kubectl() Kubectl {
	return Kubectl{Kubeconfig: u.Kubeconfig, Timeout: time.Minute}
}

// SessionToken reads the user's stored session token.
func (u *User) SessionToken() (string, error) {
	var s struct {
		Session proto.Session `json:"session"`
	}
	b, err := os.ReadFile(filepath.Join(u.Dir, "config", "profiles", "default", "session.json"))
	if err != nil {
		return "", err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return "", err
	}
	return s.Session.Token, nil
}

// API calls the coordinator's API with the user's session.
func (u *User) API(ctx context.Context, coordURL, method, path string, body, out any) error {
	tok, err := u.SessionToken()
	if err != nil {
		return err
	}
	return CallAPI(ctx, coordURL, method, path, tok, body, out)
}

// CallAPI makes one coordinator API call with a bearer token.
func CallAPI(ctx context.Context, coordURL, method, path, token string, body, out any) error {
	return CallAPIWith(ctx, http.DefaultClient, coordURL, method, path, token, body, out)
}

// CallAPIWith is CallAPI with the HTTP client hc, e.g. one that trusts a
// coordinator's private CA.
func CallAPIWith(ctx context.Context, hc *http.Client, coordURL, method, path, token string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, coordURL+path, rd)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if out != nil && len(b) > 0 {
		return json.Unmarshal(b, out)
	}
	return nil
}

// AgentIdentity is the least-privilege identity agents use in tests: a
// static token user bound to a ClusterRole that allows only impersonating
// users and groups.
var AgentIdentity = Identity{Token: "clustral-agent-token-0123456789abcdef", User: "clustral-agent"}

// RegisterAgent registers an agent named hostname with WireGuard key k
// in the cluster of joinToken, as `clustral agent` does (with a fresh
// serving key's certificate request), through hc. A refusal is a
// *coordclient.Error.
func RegisterAgent(ctx context.Context, hc *http.Client, coordURL, joinToken string, k proto.Key, hostname string) (proto.RegisterResponse, error) {
	csr, _, err := agent.NewCSR()
	if err != nil {
		return proto.RegisterResponse{}, err
	}
	return coordclient.New(coordURL, joinToken, hc).RegisterAgent(ctx, proto.RegisterAgentRequest{PublicKey: k, Hostname: hostname, CSR: csr})
}

// GrantImpersonation creates the impersonate-only ClusterRole and binds
// the agent identity to it.
func GrantImpersonation(ctx context.Context, c kubernetes.Interface, user string) error {
	_, err := c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "clustral-impersonator"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"users", "groups"}, Verbs: []string{"impersonate"},
		}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return BindClusterRole(ctx, c, "clustral-impersonator-"+user, "clustral-impersonator", rbacv1.UserKind, user)
}

// BindClusterRole binds a user or group to a ClusterRole.
func BindClusterRole(ctx context.Context, c kubernetes.Interface, name, role, kind, subject string) error {
	_, err := c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: kind, Name: subject, APIGroup: rbacv1.GroupName}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// EditRecording changes the stored recording id with edit, where c keeps
// it: the file in its data directory, or, on etcd (--store etcd, the
// default --etcd-prefix), its first chunk in the shared store
// (coordinator/recordings.Shared). It is what someone who can write the
// coordinator's storage could do.
func (c *Coordinator) EditRecording(ctx context.Context, id string, edit func([]byte)) error {
	i := slices.Index(c.args, "--etcd-endpoints")
	if i < 0 || i+1 >= len(c.args) {
		path := filepath.Join(c.Dir, "data", "recordings", id+".cast")
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		edit(b)
		return os.WriteFile(path, b, 0o600)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.args[i+1]}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer cli.Close()
	key := store.DefaultEtcdPrefix + "/" + string(store.RecordingChunks) + "/" + id + "/0"
	res, err := cli.Get(ctx, key)
	if err != nil {
		return err
	}
	if len(res.Kvs) != 1 {
		return fmt.Errorf("no chunk %s in etcd", key)
	}
	b := res.Kvs[0].Value
	edit(b)
	_, err = cli.Put(ctx, key, string(b))
	return err
}
