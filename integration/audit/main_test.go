// Package audit tests the audit trail end to end: request events from a
// real agent in front of a real kube-apiserver, delivered exactly once and
// in order through a coordinator outage and an agent crash, and tampering
// with the coordinator's store caught by clustral audit verify.
package audit

import (
	"context"
	"os"
	"strconv"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/clustral/clustral/integration/harness"
)

var (
	admin = harness.DexUser{Email: "admin@example.com", Password: "admin-pw", Groups: []string{"platform"}}
	alice = harness.DexUser{Email: "alice@example.com", Password: "alice-pw", Groups: []string{"dev"}}
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
	binDir, err = os.MkdirTemp("", "clustral-audit-bin")
	if err != nil {
		panic(err)
	}
	opts := harness.Options{
		APIServer: harness.APIServerOptions{Identities: []harness.Identity{harness.AgentIdentity}},
		Dex: &harness.DexOptions{
			Users: []harness.DexUser{admin, alice},
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
		if err := harness.BindClusterRole(ctx, c, "clustral:viewers", "view", rbacv1.GroupKind, "clustral:viewers"); err != nil {
			panic(err)
		}
	})
	os.RemoveAll(binDir)
	os.Exit(code)
}
