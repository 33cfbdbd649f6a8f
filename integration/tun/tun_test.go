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
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustral/clustral/cli/device"
	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/pkg/testkit"
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
	// ip netns exec mounts /etc/netns/<ns>/resolv.conf over
	// /etc/resolv.conf: the namespace's own, for the mesh DNS to edit.
	netnsConf(t, ns)

	bin, err := harness.ClustralBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	harness.RunInNetns(ctx, t, ns, "namespace", "TestUpTUN", innerEnv+"=1", "CLUSTRAL_BIN="+bin)
}

// origResolvConf is the namespace's resolv.conf before clustral up: a
// nameserver that does not answer (nothing outside the mesh is resolved
// in the test) and lines clustral must keep.
const origResolvConf = "# the namespace's own resolver\nsearch example.test\nnameserver 192.0.2.53\noptions timeout:1\n"

// netnsConf gives namespace ns its own resolv.conf, removed with the
// test's other traces.
func netnsConf(t *testing.T, ns string) {
	t.Helper()
	_, err := os.Stat("/etc/netns")
	created := os.IsNotExist(err)
	dir := filepath.Join("/etc/netns", ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(dir)
		if created {
			os.Remove("/etc/netns") // only if empty: another test may use it
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(origResolvConf), 0o644); err != nil {
		t.Fatal(err)
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

	meshDNS(t, ctx, u, adm, coordURL, agents[0].Agents[0].Addresses, cfgCA)
}

// meshDNS checks the mesh DNS of clustral up --tun with the namespace's
// own resolv.conf (no systemd-resolved there, so the resolv.conf method):
// any program resolves the cluster's name to its agent and reaches it by
// name, a revoked cluster stops resolving, and after kill -9 of the
// device clustral down puts resolv.conf back as it was.
func meshDNS(t *testing.T, ctx context.Context, u, adm *harness.User, coordURL string, agentAddrs []netip.Prefix, ca []byte) {
	if got := readConf(t); got != origResolvConf {
		t.Fatalf("/etc/resolv.conf in the namespace = %q, want the test's own", got)
	}
	if out, _, err := u.Run(ctx, "up", "--tun", "--kubeconfig", u.Kubeconfig); err != nil {
		t.Fatal(err)
	} else if !strings.Contains(out, "Mesh DNS: *.clustral.internal at 100.") {
		t.Fatalf("clustral up does not report the mesh DNS:\n%s", out)
	}
	t.Cleanup(func() { u.Down(context.Background()) })
	conf := readConf(t)
	if !strings.HasPrefix(conf, "# clustral begin") || !strings.HasSuffix(conf, origResolvConf) {
		t.Fatalf("resolv.conf with clustral up --tun:\n%s", conf)
	}

	// getent asks the C library's resolver, as any program does.
	const name = "kind.clustral.internal"
	out, err := exec.CommandContext(ctx, "getent", "ahostsv4", name).Output()
	if err != nil || !strings.HasPrefix(string(out), agentAddrs[0].Addr().String()+" ") {
		t.Fatalf("getent ahostsv4 %s = %q, %v; want %s", name, out, err, agentAddrs[0].Addr())
	}
	out, err = exec.CommandContext(ctx, "getent", "hosts", name).Output()
	if err != nil || !slices.ContainsFunc(agentAddrs, func(p netip.Prefix) bool { return strings.HasPrefix(string(out), p.Addr().String()+" ") }) {
		t.Fatalf("getent hosts %s = %q, %v; want one of %v", name, out, err, agentAddrs)
	}
	t.Logf("getent hosts %s: %s", name, strings.TrimSpace(string(out)))

	// A plain curl reaches the agent by name, through the kernel and the
	// TUN device, trusting the mesh CA.
	if _, err := exec.LookPath("curl"); err == nil {
		caFile := filepath.Join(t.TempDir(), "mesh-ca.pem")
		must(t, os.WriteFile(caFile, ca, 0o600))
		out, err := exec.CommandContext(ctx, "curl", "-sS", "--noproxy", "*", "--max-time", "20", "--cacert", caFile, "https://"+name+"/version").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "gitVersion") {
			t.Fatalf("curl https://%s/version: %v\n%s", name, err, out)
		}
		t.Logf("curl https://%s/version: %.60s...", name, out)
	} else {
		t.Log("curl is not installed; the HTTPS request by name is not checked")
	}

	// The status shows it.
	if out, _, err := u.Run(ctx, "status"); err != nil || !strings.Contains(out, "Mesh DNS:") {
		t.Fatalf("clustral status: %v\n%s", err, out)
	}

	// Access ends: the name stops resolving, from the live map.
	var asgs []proto.Assignment
	must(t, adm.API(ctx, coordURL, "GET", "/api/v1/assignments", nil, &asgs))
	for _, a := range asgs {
		must(t, adm.API(ctx, coordURL, "DELETE", "/api/v1/assignments/"+a.ID, nil, nil))
	}
	testkit.WaitFor(t, name+" to stop resolving after the assignment is removed", func() bool {
		err := exec.CommandContext(ctx, "getent", "ahostsv4", name).Run()
		var ee *exec.ExitError
		return errors.As(err, &ee) && ee.ExitCode() == 2 // not found
	})

	// kill -9: nothing restores resolv.conf until the next down.
	cfgDir, _, err := u.Run(ctx, "config", "path")
	must(t, err)
	st, alive := device.ReadState(strings.TrimSpace(cfgDir))
	if !alive {
		t.Fatalf("no running clustral up in %s", cfgDir)
	}
	must(t, syscall.Kill(st.PID, syscall.SIGKILL))
	testkit.WaitFor(t, "the killed clustral up to exit", func() bool { return !device.Alive(st.PID) })
	if !strings.HasPrefix(readConf(t), "# clustral begin") {
		t.Fatal("resolv.conf lost clustral's block without clustral down; the test kills nothing")
	}
	if out, _, err := u.Run(ctx, "doctor"); !strings.Contains(out, "still points at the mesh DNS of a clustral up that is gone") {
		t.Fatalf("clustral doctor after kill -9 (%v):\n%s", err, out)
	}
	downOut, _, err := u.Run(ctx, "down")
	if err != nil || !strings.Contains(downOut, "Restored the system's DNS") {
		t.Fatalf("clustral down after kill -9: %v\n%s", err, downOut)
	}
	if got := readConf(t); got != origResolvConf {
		t.Fatalf("resolv.conf after kill -9 and clustral down:\n%q\nwant\n%q", got, origResolvConf)
	}
}

func readConf(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/etc/resolv.conf")
	must(t, err)
	return string(b)
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
