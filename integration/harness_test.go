package integration

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/clustral/clustral/integration/harness"
)

// The self-test's fixtures.
const (
	agentToken    = "agent-token-for-tests"
	agentUser     = "clustral-agent"
	aliceEmail    = "alice@example.com"
	alicePass     = "alice-password"
	coordID       = "clustral-coordinator"
	coordSecret   = "coordinator-secret"
	coordRedirect = "https://coordinator.invalid/callback"
)

var env *harness.Env

func TestMain(m *testing.M) {
	opts := harness.Options{
		APIServer: harness.APIServerOptions{Identities: []harness.Identity{
			{Token: agentToken, User: agentUser, Groups: []string{"clustral:agents"}},
		}},
		Dex: &harness.DexOptions{
			Users:   []harness.DexUser{{Email: aliceEmail, Password: alicePass, Username: "alice", Groups: []string{"viewers"}}},
			Clients: []harness.DexClient{{ID: coordID, Secret: coordSecret, RedirectURIs: []string{coordRedirect}}},
		},
	}
	var pids []int
	code := harness.Main(m, opts, func(e *harness.Env) { env = e })
	if env != nil {
		pids = env.Pids()
	}
	for _, pid := range pids {
		if harness.ProcessGroupAlive(pid) {
			fmt.Fprintf(os.Stderr, "process group %d outlived the environment\n", pid)
			code = 1
		}
	}
	if env != nil && len(pids) < 4 {
		fmt.Fprintf(os.Stderr, "expected at least 4 component processes, tracked %v\n", pids)
		code = 1
	}
	os.Exit(code)
}

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// verifyIDToken checks raw against Dex's discovery and keys and returns
// its claims.
func verifyIDToken(t *testing.T, ctx context.Context, raw, audience string) map[string]any {
	t.Helper()
	ctx = oidc.ClientContext(ctx, env.Dex.HTTPClient())
	p, err := oidc.NewProvider(ctx, env.Dex.Issuer)
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	tok, err := p.Verifier(&oidc.Config{ClientID: audience}).Verify(ctx, raw)
	if err != nil {
		t.Fatalf("verify ID token: %v", err)
	}
	var claims map[string]any
	if err := tok.Claims(&claims); err != nil {
		t.Fatal(err)
	}
	return claims
}

func groupsOf(claims map[string]any) []string {
	var gs []string
	raw, _ := claims["groups"].([]any)
	for _, g := range raw {
		s, _ := g.(string)
		gs = append(gs, s)
	}
	return gs
}

func TestDexPasswordGrant(t *testing.T) {
	env.LogOnFailure(t)
	ctx := ctxFor(t)
	raw, err := env.Dex.IDToken(ctx, aliceEmail, alicePass)
	if err != nil {
		t.Fatal(err)
	}
	claims := verifyIDToken(t, ctx, raw, coordID)
	if claims["email"] != aliceEmail {
		t.Errorf("email = %v, want %s", claims["email"], aliceEmail)
	}
	if claims["email_verified"] != true {
		t.Errorf("email_verified = %v, want true", claims["email_verified"])
	}
	if g := groupsOf(claims); !slices.Equal(g, []string{"viewers"}) {
		t.Errorf("groups = %v, want [viewers]", g)
	}
	if _, err := env.Dex.IDToken(ctx, aliceEmail, "wrong"); err == nil {
		t.Error("IDToken with a wrong password succeeded")
	}

	p, err := oidc.NewProvider(oidc.ClientContext(ctx, env.Dex.HTTPClient()), env.Dex.Issuer)
	if err != nil {
		t.Fatal(err)
	}
	var disco struct {
		Grants []string `json:"grant_types_supported"`
	}
	if err := p.Claims(&disco); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"password", "authorization_code", "urn:ietf:params:oauth:grant-type:device_code"} {
		if !slices.Contains(disco.Grants, g) {
			t.Errorf("grant %s not supported; have %v", g, disco.Grants)
		}
	}
}

func TestDexBrowserLogin(t *testing.T) {
	env.LogOnFailure(t)
	ctx := ctxFor(t)
	cfg := oauth2.Config{
		ClientID: coordID, ClientSecret: coordSecret, RedirectURL: coordRedirect,
		Endpoint: env.Dex.Endpoint(), Scopes: []string{oidc.ScopeOpenID, "email", "groups"},
	}
	verifier := oauth2.GenerateVerifier()
	authURL := cfg.AuthCodeURL("state-123", oauth2.S256ChallengeOption(verifier))

	t.Run("ok", func(t *testing.T) {
		u, err := env.Dex.Browser().Login(ctx, authURL, aliceEmail, alicePass, coordRedirect)
		if err != nil {
			t.Fatal(err)
		}
		if got := u.Query().Get("state"); got != "state-123" {
			t.Errorf("state = %q", got)
		}
		code := u.Query().Get("code")
		if code == "" {
			t.Fatalf("no code in %s", u)
		}
		tok, err := cfg.Exchange(context.WithValue(ctx, oauth2.HTTPClient, env.Dex.HTTPClient()), code, oauth2.VerifierOption(verifier))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := tok.Extra("id_token").(string)
		claims := verifyIDToken(t, ctx, raw, coordID)
		if claims["email"] != aliceEmail || !slices.Equal(groupsOf(claims), []string{"viewers"}) {
			t.Errorf("claims = %v", claims)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		_, err := env.Dex.Browser().Login(ctx, authURL, aliceEmail, "nope", coordRedirect)
		if !errors.Is(err, harness.ErrLoginRejected) {
			t.Fatalf("err = %v, want ErrLoginRejected", err)
		}
	})
}

// TestDexRestart changes a user's groups by restarting a separate Dex and
// checks the old process is gone.
func TestDexRestart(t *testing.T) {
	ctx := ctxFor(t)
	user := harness.DexUser{Email: "bob@example.com", Password: "bob-pw", Groups: []string{"a"}}
	d, err := harness.StartDex(ctx, t.TempDir(), harness.DexOptions{Users: []harness.DexUser{user}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	issuer, oldPid := d.Issuer, d.Pid()
	user.Groups = []string{"b", "c"}
	if err := d.Restart(ctx, []harness.DexUser{user}); err != nil {
		t.Fatal(err)
	}
	if d.Issuer != issuer {
		t.Errorf("issuer changed: %s -> %s", issuer, d.Issuer)
	}
	if harness.ProcessGroupAlive(oldPid) {
		t.Errorf("old dex %d still alive after restart", oldPid)
	}
	raw, err := d.IDToken(ctx, user.Email, user.Password)
	if err != nil {
		t.Fatal(err)
	}
	claims := decodeClaims(t, raw)
	if g := groupsOf(claims); !slices.Equal(g, []string{"b", "c"}) {
		t.Errorf("groups after restart = %v, want [b c]", g)
	}
	newPid := d.Pid()
	d.Close()
	if harness.ProcessGroupAlive(newPid) {
		t.Errorf("dex %d alive after Close", newPid)
	}
}

func decodeClaims(t *testing.T, raw string) map[string]any {
	t.Helper()
	// The token came straight from Dex over TLS; only its payload matters.
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("malformed token %q", raw)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(b, &claims); err != nil {
		t.Fatal(err)
	}
	return claims
}

func TestEtcdStopsOnClose(t *testing.T) {
	e, err := harness.StartEtcd(ctxFor(t), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pid := e.Pid()
	if !harness.ProcessGroupAlive(pid) {
		t.Fatalf("etcd %d not alive", pid)
	}
	e.Close()
	if harness.ProcessGroupAlive(pid) {
		t.Fatalf("etcd %d alive after Close", pid)
	}
}

// TestImpersonation shows the agent's least-privilege identity acting as
// an OIDC user through impersonation, and nothing without it.
func TestImpersonation(t *testing.T) {
	env.LogOnFailure(t)
	ctx := ctxFor(t)
	admin := env.APIServer.Client()
	const ns = "impersonation"
	mustCreate(t, ctx, func() error {
		_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, ctx, func() error { return harness.GrantImpersonation(ctx, admin, agentUser) })
	mustCreate(t, ctx, func() error {
		return harness.BindClusterRole(ctx, admin, "viewers-view", "view", rbacv1.GroupKind, "viewers")
	})

	clientAs := func(user string, groups ...string) kubernetes.Interface {
		cfg := env.APIServer.ConfigFor(agentToken)
		if user != "" {
			cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
		}
		return kubernetes.NewForConfigOrDie(cfg)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "probe"}}
	tests := []struct {
		name   string
		client kubernetes.Interface
		listOK bool
	}{
		{name: "as alice in viewers", client: clientAs("alice", "viewers"), listOK: true},
		{name: "as alice without groups", client: clientAs("alice")},
		{name: "agent itself", client: clientAs("")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// RBAC bindings take effect through the apiserver's informers.
			err := harness.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
				_, err := tt.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
				if tt.listOK {
					return err
				}
				if !apierrors.IsForbidden(err) {
					return fmt.Errorf("list pods: got %v, want Forbidden", err)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			_, err = tt.client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
			if !apierrors.IsForbidden(err) {
				t.Fatalf("create configmap: got %v, want Forbidden", err)
			}
		})
	}

	// The same through kubectl with a kubeconfig for the agent.
	kc := filepath.Join(t.TempDir(), "agent.kubeconfig")
	if err := env.APIServer.WriteKubeconfig(kc, "agent", agentToken); err != nil {
		t.Fatal(err)
	}
	k := harness.Kubectl{Kubeconfig: kc, Timeout: 30 * time.Second}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"auth", "can-i", "list", "pods", "-n", ns, "--as=alice", "--as-group=viewers"}, "yes"},
		{[]string{"auth", "can-i", "create", "configmaps", "-n", ns, "--as=alice", "--as-group=viewers"}, "no"},
		{[]string{"auth", "can-i", "list", "pods", "-n", ns}, "no"},
	} {
		res, err := k.Run(ctx, c.args...)
		var kerr *harness.KubectlError
		if err != nil && !errors.As(err, &kerr) { // can-i exits 1 for "no"
			t.Fatalf("kubectl %v: %v", c.args, err)
		}
		if got := strings.TrimSpace(res.Stdout); got != c.want {
			t.Errorf("kubectl %v = %q (stderr %q), want %q", c.args, got, res.Stderr, c.want)
		}
	}
}

func mustCreate(t *testing.T, ctx context.Context, create func() error) {
	t.Helper()
	if err := create(); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func TestAdminKubeconfig(t *testing.T) {
	res, err := harness.Kubectl{Kubeconfig: env.APIServer.Kubeconfig}.Run(ctxFor(t), "get", "namespace", "default", "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(res.Stdout); got != "namespace/default" {
		t.Fatalf("kubectl get namespace default = %q", got)
	}
}

// TestKWOKExecLogs runs kubectl exec and kubectl logs against the
// apiserver, served by KWOK's kubelet API on the fake node.
func TestKWOKExecLogs(t *testing.T) {
	env.LogOnFailure(t)
	ctx := ctxFor(t)
	kw := env.KWOK
	if kw == nil {
		var err error
		if kw, err = env.StartKWOK(ctx); err != nil {
			t.Fatal(err)
		}
	}
	const ns, pod = "kwok-selftest", "web"
	admin := env.APIServer.Client()
	mustCreate(t, ctx, func() error {
		_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		return err
	})
	dir := t.TempDir()
	logFile := filepath.Join(dir, "web.log")
	if err := harness.WriteCRILog(logFile, "first line", "second line"); err != nil {
		t.Fatal(err)
	}
	if err := kw.SetExec(ctx, ns, pod, dir, map[string]string{"GREETING": "hello from kwok"}); err != nil {
		t.Fatal(err)
	}
	if err := kw.SetLogs(ctx, ns, pod, logFile, false); err != nil {
		t.Fatal(err)
	}
	if _, err := kw.CreatePod(ctx, harness.FakePod(ns, pod)); err != nil {
		t.Fatal(err)
	}

	k := harness.Kubectl{Kubeconfig: env.APIServer.Kubeconfig, Timeout: 20 * time.Second}
	var out string
	err := harness.Eventually(ctx, 20*time.Second, func(ctx context.Context) error { // KWOK learns of Exec objects through a watch
		res, err := k.Run(ctx, "exec", "-n", ns, pod, "--", "sh", "-c", `echo "$GREETING in $(pwd)"`)
		out = res.Stdout
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "hello from kwok in " + dir + "\n"; out != want {
		t.Errorf("exec output = %q, want %q", out, want)
	}
	err = harness.Eventually(ctx, 20*time.Second, func(ctx context.Context) error {
		res, err := k.Run(ctx, "logs", "-n", ns, pod)
		out = res.Stdout
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "first line\nsecond line\n"; out != want {
		t.Errorf("logs = %q, want %q", out, want)
	}

	t.Run("port-forward", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "behind the pod") }))
		defer srv.Close()
		target, _ := url.Parse(srv.URL)
		tport, _ := strconv.Atoi(target.Port())
		if err := kw.SetPortForward(ctx, ns, pod, 8080, target.Hostname(), int32(tport)); err != nil {
			t.Fatal(err)
		}
		local, err := harness.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		kubectl, err := exec.LookPath("kubectl")
		if err != nil {
			t.Fatal(err)
		}
		pf, err := harness.StartProcess("kubectl-port-forward", kubectl,
			[]string{"--kubeconfig=" + env.APIServer.Kubeconfig, "port-forward", "-n", ns, "pod/" + pod, fmt.Sprintf("%d:8080", local)},
			os.Environ(), filepath.Join(t.TempDir(), "port-forward.log"))
		if err != nil {
			t.Fatal(err)
		}
		defer pf.Stop()
		var body string
		err = harness.Eventually(ctx, 20*time.Second, func(ctx context.Context) error {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", local))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			body = string(b)
			return err
		})
		if err != nil {
			t.Fatalf("%v\n%s", err, pf.Tail(20))
		}
		if body != "behind the pod" {
			t.Errorf("body = %q", body)
		}
	})

	t.Run("restart", func(t *testing.T) {
		if err := kw.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		err := harness.Eventually(ctx, 20*time.Second, func(ctx context.Context) error {
			res, err := k.Run(ctx, "exec", "-n", ns, pod, "--", "echo", "again")
			out = res.Stdout
			return err
		})
		if err != nil || out != "again\n" {
			t.Fatalf("exec after restart = %q, %v", out, err)
		}
	})
}

// TestNewStopsOnCleanup starts a per-test Env and checks its processes are
// gone once the (sub)test's cleanups have run.
func TestNewStopsOnCleanup(t *testing.T) {
	var pids []int
	t.Run("inner", func(t *testing.T) {
		e := harness.New(t, harness.Options{SkipControllerManager: true})
		pids = e.Pids()
		if _, err := e.APIServer.Client().CoreV1().Namespaces().Get(t.Context(), "default", metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
	})
	if len(pids) != 2 {
		t.Fatalf("pids = %v, want etcd and kube-apiserver", pids)
	}
	for _, pid := range pids {
		if harness.ProcessGroupAlive(pid) {
			t.Errorf("process group %d alive after the test ended", pid)
		}
	}
}
