// Package access tests clustral's access management end to end: roles
// with restrictions and time windows, assignments to users and OIDC
// groups, just-in-time requests and their approval, expiry and
// revocation, and the administrators' API, through the clustral CLI and
// kubectl against a real coordinator, agent, Dex and kube-apiserver.
package access

import (
	"context"
	"os"
	"strconv"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/clustral/clustral/integration/harness"
)

// The static users in Dex. bob is in "ops", the approver group of the
// role editor; dave joins "sre" in TestGroupAssignment.
var (
	admin = harness.DexUser{Email: "admin@example.com", Password: "admin-pw", Groups: []string{"platform"}}
	alice = harness.DexUser{Email: "alice@example.com", Password: "alice-pw", Groups: []string{"dev"}}
	bob   = harness.DexUser{Email: "bob@example.com", Password: "bob-pw", Groups: []string{"ops"}}
	carol = harness.DexUser{Email: "carol@example.com", Password: "carol-pw"}
	dave  = harness.DexUser{Email: "dave@example.com", Password: "dave-pw", Groups: []string{"dev"}}
)

var dexUsers = []harness.DexUser{admin, alice, bob, carol, dave}

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
	binDir, err = os.MkdirTemp("", "clustral-access-bin")
	if err != nil {
		panic(err)
	}
	opts := harness.Options{
		APIServer: harness.APIServerOptions{Identities: []harness.Identity{harness.AgentIdentity}},
		Dex: &harness.DexOptions{
			Users: dexUsers,
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
