// Package tun tests `clustral up --tun`: the same mesh over a TUN device
// with routes, in a network namespace the test creates and removes, so the
// host's own interfaces and routes are never touched.
package tun

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

const innerEnv = "CLUSTRAL_TUN_INNER"

// TestUpTUN runs itself again inside a new network namespace (as root),
// where the whole mesh — apiserver, Dex, coordinator, agent and
// `clustral up --tun` — runs on the namespace's own loopback.
func TestUpTUN(t *testing.T) {
	if os.Getenv(innerEnv) != "" {
		inner(t)
		return
	}
	if os.Getuid() != 0 {
		t.Skip("clustral up --tun needs root to create a network namespace and a TUN device")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("iproute2's ip is not installed")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun on this machine")
	}
	var b [4]byte
	rand.Read(b[:])
	ns := "clustral-tun-" + hex.EncodeToString(b[:])
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() {
		// Kill anything left in the namespace, then remove it.
		if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
			for _, pid := range strings.Fields(string(out)) {
				var p int
				fmt.Sscan(pid, &p)
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
		exec.Command("ip", "netns", "del", ns).Run()
		if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), ns) {
			t.Errorf("network namespace %s still exists", ns)
		}
	})
	run(t, "ip", "-n", ns, "link", "set", "lo", "up")

	bin, err := harness.ClustralBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, os.Args[0], "-test.run", "^TestUpTUN$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), innerEnv+"=1", "CLUSTRAL_BIN="+bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("inside the namespace: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestUpTUN") {
		t.Fatalf("the inner test did not pass:\n%s", out)
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

var (
	admin = harness.DexUser{Email: "admin@example.com", Password: "admin-pw"}
	alice = harness.DexUser{Email: "alice@example.com", Password: "alice-pw"}
)

const secret = "tun-coordinator-secret"

// inner runs in the namespace.
func inner(t *testing.T) {
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	coordURL := fmt.Sprintf("http://127.0.0.1:%d", port)
	env := harness.New(t, harness.Options{
		APIServer:             harness.APIServerOptions{Identities: []harness.Identity{harness.AgentIdentity}},
		SkipControllerManager: true,
		Dex: &harness.DexOptions{
			Users:   []harness.DexUser{admin, alice},
			Clients: []harness.DexClient{{ID: "clustral", Secret: secret, RedirectURIs: []string{coordURL + "/oidc/callback"}}},
		},
	})
	ctx := context.Background()
	c := env.APIServer.Client()
	if err := harness.GrantImpersonation(ctx, c, harness.AgentIdentity.User); err != nil {
		t.Fatal(err)
	}
	if err := harness.BindClusterRole(ctx, c, "tun-viewers", "system:discovery", rbacv1.GroupKind, "clustral:viewers"); err != nil {
		t.Fatal(err)
	}
	bin := os.Getenv("CLUSTRAL_BIN")
	dir := t.TempDir()
	coord, err := harness.StartCoordinator(ctx, bin, filepath.Join(dir, "coord"), harness.CoordinatorOptions{
		Port: port, Dex: env.Dex, ClientID: "clustral", ClientSecret: secret, Admins: []string{admin.Email},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(coord.Stop)
	adm := harness.NewUser(bin, filepath.Join(dir, "admin"), admin)
	u := harness.NewUser(bin, filepath.Join(dir, "alice"), alice)
	for _, x := range []*harness.User{adm, u} {
		if err := x.LoginWithToken(ctx, env.Dex, "clustral", secret, coordURL); err != nil {
			t.Fatal(err)
		}
	}
	var cl proto.CreateClusterResponse
	must(t, adm.API(ctx, coordURL, "POST", "/api/v1/clusters", proto.CreateClusterRequest{Name: "kind"}, &cl))
	must(t, adm.API(ctx, coordURL, "POST", "/api/v1/roles", proto.Role{Name: "viewer", Groups: []string{"clustral:viewers"}}, nil))
	must(t, adm.API(ctx, coordURL, "POST", "/api/v1/assignments", proto.Assignment{User: alice.Email, Role: "viewer", Cluster: "kind"}, nil))
	kc := filepath.Join(dir, "agent-kubeconfig")
	must(t, env.APIServer.WriteKubeconfig(kc, "agent", harness.AgentIdentity.Token))
	ag, err := harness.StartAgent(ctx, bin, filepath.Join(dir, "agent"), coordURL, cl.JoinToken, kc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ag.Proc.Stop)

	if _, _, err := u.Run(ctx, "up", "--tun", "--kubeconfig", u.Kubeconfig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Down(context.Background()) })

	// The TUN device carries the overlay address and routes the ranges.
	ifc, err := net.InterfaceByName("clustral0")
	if err != nil {
		t.Fatalf("no TUN device: %v", err)
	}
	addrs, _ := ifc.Addrs()
	var v4, v6 bool
	for _, a := range addrs {
		s := a.String()
		v4 = v4 || strings.HasPrefix(s, "100.") && strings.HasSuffix(s, "/32")
		v6 = v6 || strings.HasPrefix(s, "fd") && strings.HasSuffix(s, "/128")
	}
	if !v4 || !v6 {
		t.Fatalf("clustral0 addresses = %v, want the IPv4 and IPv6 overlay addresses", addrs)
	}
	routes, _ := exec.Command("ip", "route", "show", "dev", "clustral0").Output()
	if !strings.Contains(string(routes), "100.64.0.0/10") {
		t.Fatalf("routes via clustral0:\n%s", routes)
	}

	// kubectl works as before.
	res, err := u.Kubectl().Run(ctx, "--context", "clustral-kind", "auth", "whoami")
	if err != nil || !strings.Contains(res.Stdout, alice.Email) || !strings.Contains(res.Stdout, "clustral:viewers") {
		t.Fatalf("kubectl through --tun: %v\n%s", err, res.Stdout)
	}

	// Any program reaches the agent's overlay address directly: a plain
	// HTTPS client, no proxy, through the kernel's route.
	var agents []proto.Cluster
	must(t, adm.API(ctx, coordURL, "GET", "/api/v1/clusters", nil, &agents))
	agentIP := agents[0].Agents[0].Addresses[0].Addr()
	pool := x509.NewCertPool()
	cfgCA := caFromKubeconfig(t, u.Kubeconfig)
	pool.AppendCertsFromPEM(cfgCA)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy:           nil,
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "kind.clustral.internal"},
	}}
	resp, err := hc.Get("https://" + net.JoinHostPort(agentIP.String(), "443") + "/version")
	if err != nil {
		t.Fatalf("direct request to the agent over the TUN device: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "gitVersion") {
		t.Fatalf("direct /version = %d %s", resp.StatusCode, body)
	}

	// down removes the device.
	if err := u.Down(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := net.InterfaceByName("clustral0"); err == nil {
		t.Fatal("clustral0 still exists after clustral down")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// caFromKubeconfig returns the mesh CA clustral up wrote.
func caFromKubeconfig(t *testing.T, path string) []byte {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Clusters["clustral-kind"]
	if c == nil {
		t.Fatal("no clustral-kind cluster in the kubeconfig")
	}
	return c.CertificateAuthorityData
}
