// Package mesh tests clustral end to end: a real coordinator, agents and
// `clustral up` processes talking WireGuard over loopback UDP, Dex as the
// OIDC provider, a real kube-apiserver judging the impersonated identities,
// and the installed kubectl.
package mesh

import (
	"context"
	"os"
	"strconv"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/clustral/clustral/integration/harness"
)

// The static users in Dex.
var (
	admin = harness.DexUser{Email: "admin@example.com", Password: "admin-pw", Groups: []string{"platform"}}
	alice = harness.DexUser{Email: "alice@example.com", Password: "alice-pw", Groups: []string{"dev"}}
	bob   = harness.DexUser{Email: "bob@example.com", Password: "bob-pw", Groups: []string{"ops"}}
	carol = harness.DexUser{Email: "carol@example.com", Password: "carol-pw"}
)

const oidcSecret = "coordinator-secret-0123456789"

var (
	env         *harness.Env
	coordPort   int
	binDir      string
	clustralBin string
)

func coordURL() string { return "http://127.0.0.1:" + strconv.Itoa(coordPort) }

func TestMain(m *testing.M) {
	p, err := harness.FreePort()
	if err != nil {
		panic(err)
	}
	coordPort = p
	binDir, err = os.MkdirTemp("", "clustral-mesh-bin")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(binDir)
	opts := harness.Options{
		APIServer: harness.APIServerOptions{Identities: []harness.Identity{harness.AgentIdentity}},
		Dex: &harness.DexOptions{
			Users: []harness.DexUser{admin, alice, bob, carol},
			Clients: []harness.DexClient{{
				ID: "clustral", Secret: oidcSecret,
				RedirectURIs: []string{coordURL() + "/oidc/callback"},
			}},
		},
	}
	code := harness.Main(m, opts, func(e *harness.Env) {
		env = e
		ctx := context.Background()
		c := e.APIServer.Client()
		if err := harness.GrantImpersonation(ctx, c, harness.AgentIdentity.User); err != nil {
			panic(err)
		}
		for group, role := range map[string]string{"clustral:viewers": "view", "clustral:editors": "edit"} {
			if err := harness.BindClusterRole(ctx, c, group, role, rbacv1.GroupKind, group); err != nil {
				panic(err)
			}
		}
	})
	os.RemoveAll(binDir)
	os.Exit(code)
}
