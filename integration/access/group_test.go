package access

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// TestGroupAssignment: a role assigned to an OIDC group reaches a user
// once the identity provider puts them in the group and they log in
// again; before, they have no access.
func TestGroupAssignment(t *testing.T) {
	m := suite.NewMeshWithAgent(t)
	m.Admin.MustRun("assign", "--group", "sre", "--role", "viewer", "--cluster", "kind")
	d := suite.NewUser(t, dave)
	d.MustLogin()
	d.MustUp()

	r, err := d.KubectlRefused("get", "configmaps", "-n", "default")
	if err != nil {
		t.Fatalf("dave, not in sre: %v", err)
	}
	if r.Code != proto.CodeNoRoleAssignment {
		t.Errorf("dave, not in sre: %s %q, want %s", r.Code, r.Message, proto.CodeNoRoleAssignment)
	}

	// Dex now puts dave in sre; his next login carries it.
	inSRE := slices.Clone(dexUsers)
	for i, u := range inSRE {
		if u.Email == dave.Email {
			inSRE[i].Groups = append(slices.Clone(u.Groups), "sre")
		}
	}
	ctx := context.Background()
	if err := suite.Env.Dex.Restart(ctx, inSRE); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := suite.Env.Dex.Restart(ctx, dexUsers); err != nil {
			t.Errorf("restore Dex: %v", err)
		}
	})
	// The groups change with the login, not with Dex.
	time.Sleep(500 * time.Millisecond)
	if _, err := d.KubectlRefused("get", "configmaps", "-n", "default"); err != nil {
		t.Fatalf("dave, in sre but not logged in again: %v", err)
	}

	d.MustLogin()
	harness.MustEventually(t, 10*time.Second, func(context.Context) error {
		_, err := d.RunKubectl("get", "configmaps", "-n", "default")
		return err
	})
	res, err := d.RunKubectl("auth", "whoami")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{dave.Email, "clustral:viewers"} {
		if !strings.Contains(res.Stdout, want) {
			t.Errorf("dave whoami = %q, missing %q", res.Stdout, want)
		}
	}
	if got := reachable(d); !slices.Equal(got, []string{"kind"}) {
		t.Errorf("dave reaches %v, want [kind]", got)
	}

	// Out of the group at the next login, out of the cluster.
	if err := suite.Env.Dex.Restart(ctx, dexUsers); err != nil {
		t.Fatal(err)
	}
	d.MustLogin()
	harness.MustEventually(t, 10*time.Second, func(context.Context) error {
		if _, err := d.RunKubectl("get", "configmaps", "-n", "default"); err == nil {
			return fmt.Errorf("dave, out of sre, still has access")
		}
		return nil
	})
}
