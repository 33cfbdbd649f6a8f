// Command demo runs clustral's main job on one machine, end to end:
//
//  1. Dex as the OIDC provider, and a local kube-apiserver (etcd, the
//     controller manager) — or, with DEMO_KUBECONFIG=<file>, an existing
//     cluster instead;
//  2. a coordinator on its embedded defaults (bbolt);
//  3. an agent in front of the apiserver;
//  4. a demo user logged in non-interactively;
//  5. `clustral up`;
//  6. `kubectl --context clustral-demo auth whoami` through the mesh.
//
// It prints the result of that kubectl command and stops everything it
// started. Run it with `make demo`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

var (
	demoAdmin = harness.DexUser{Email: "admin@example.com", Password: "admin-demo", Groups: []string{"platform"}}
	demoUser  = harness.DexUser{Email: "dev@example.com", Password: "dev-demo", Groups: []string{"developers"}}
)

const (
	clientID     = "clustral"
	clientSecret = "demo-coordinator-secret"
	cluster      = "demo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo failed: %v\n", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "==> "+format+"\n", args...)
}

func run(ctx context.Context) error {
	start := time.Now()
	dir, bin, err := harness.TempClustral("clustral-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	port, err := harness.FreePort()
	if err != nil {
		return err
	}
	coordURL := fmt.Sprintf("http://127.0.0.1:%d", port)

	external := os.Getenv("DEMO_KUBECONFIG")
	opts := harness.Options{
		Dex: &harness.DexOptions{
			Users:   []harness.DexUser{demoAdmin, demoUser},
			Clients: []harness.DexClient{{ID: clientID, Secret: clientSecret, RedirectURIs: []string{coordURL + "/oidc/callback"}}},
		},
	}
	var env *harness.Env
	if external == "" {
		step("starting etcd, kube-apiserver, the controller manager and Dex")
		opts.APIServer.Identities = []harness.Identity{harness.AgentIdentity}
		env, err = harness.Start(ctx, opts)
	} else {
		step("starting Dex; the agent will front the cluster of %s", external)
		opts.SkipKubernetes = true
		env, err = harness.Start(ctx, opts)
	}
	if err != nil {
		return err
	}
	defer env.Close()

	step("starting the coordinator on its embedded defaults at %s; users of example.com may log in", coordURL)
	coord, err := harness.StartCoordinator(ctx, bin, filepath.Join(dir, "coordinator"), harness.CoordinatorOptions{
		Port: port, Dex: env.Dex, ClientID: clientID, ClientSecret: clientSecret, Admins: []string{demoAdmin.Email},
		AllowEmailDomains: []string{"example.com"},
	})
	if err != nil {
		return err
	}
	defer coord.Stop()

	step("an administrator registers cluster %q and gives %s the role demo-viewer", cluster, demoUser.Email)
	admin := harness.NewUser(bin, filepath.Join(dir, "admin"), demoAdmin)
	if err := admin.LoginWithToken(ctx, env.Dex, clientID, clientSecret, coordURL); err != nil {
		return err
	}
	user := harness.NewUser(bin, filepath.Join(dir, "user"), demoUser)
	// The user logs in first, so the coordinator knows them.
	step("%s logs in (non-interactively, with an ID token from Dex)", demoUser.Email)
	if err := user.LoginWithToken(ctx, env.Dex, clientID, clientSecret, coordURL); err != nil {
		return err
	}
	var cl proto.CreateClusterResponse
	if err := admin.API(ctx, coordURL, "POST", "/api/v1/clusters", proto.CreateClusterRequest{Name: cluster}, &cl); err != nil {
		return err
	}
	if err := admin.API(ctx, coordURL, "POST", "/api/v1/roles", proto.Role{Name: "demo-viewer", Description: "the demo's role", Groups: []string{"clustral:demo-viewers"}}, nil); err != nil {
		return err
	}
	if err := admin.API(ctx, coordURL, "POST", "/api/v1/assignments", proto.Assignment{User: demoUser.Email, Role: "demo-viewer", Cluster: cluster}, nil); err != nil {
		return err
	}

	kubeconfig := external
	if external == "" {
		if err := harness.GrantImpersonation(ctx, env.APIServer.Client(), harness.AgentIdentity.User); err != nil {
			return err
		}
		kubeconfig = filepath.Join(dir, "agent-kubeconfig")
		if err := env.APIServer.WriteKubeconfig(kubeconfig, "agent", harness.AgentIdentity.Token); err != nil {
			return err
		}
	}
	step("starting an agent with the cluster's join token")
	ag, err := harness.StartAgent(ctx, bin, filepath.Join(dir, "agent"), coordURL, cl.JoinToken, kubeconfig)
	if err != nil {
		return err
	}
	defer ag.Proc.Stop()

	step("clustral up")
	upStart := time.Now()
	out, _, err := user.Run(ctx, "up", "--kubeconfig", user.Kubeconfig)
	if err != nil {
		return err
	}
	defer user.Down(context.Background())
	fmt.Fprint(os.Stderr, indent(out))

	step("kubectl --context clustral-%s auth whoami   (through the mesh)", cluster)
	k := user.Kubectl()
	res, err := k.Run(ctx, "--context", "clustral-"+cluster, "auth", "whoami")
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "    (first kubectl %s after clustral up; demo took %s)\n\n", time.Since(upStart).Round(time.Millisecond), time.Since(start).Round(time.Second))
	fmt.Print(res.Stdout)
	return nil
}

func indent(s string) string {
	out := ""
	for _, l := range splitLines(s) {
		if l != "" {
			out += "    " + l + "\n"
		}
	}
	return out
}

func splitLines(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}
		out = append(out, s[:i])
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
	return out
}
