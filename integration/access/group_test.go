package access

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

// TestGroupAssignment: a role assigned to an OIDC group reaches a user
// once the identity provider puts them in the group and they log in
// again; before, they have no access.
func TestGroupAssignment(t *testing.T) {
	m := newMesh(t)
	startAgent(t, m.joinToken)
	m.admin.must("assign", "--group", "sre", "--role", "viewer", "--cluster", "kind")
	d := newUser(t, dave)
	d.login()
	d.up()

	r, err := d.kubectlRefused("get", "configmaps", "-n", "default")
	if err != nil {
		t.Fatalf("dave, not in sre: %v", err)
	}
	if r.code != proto.CodeNoRoleAssignment {
		t.Errorf("dave, not in sre: %s %q, want %s", r.code, r.message, proto.CodeNoRoleAssignment)
	}

	// Dex now puts dave in sre; his next login carries it.
	inSRE := slices.Clone(dexUsers)
	for i, u := range inSRE {
		if u.Email == dave.Email {
			inSRE[i].Groups = append(slices.Clone(u.Groups), "sre")
		}
	}
	ctx := context.Background()
	if err := env.Dex.Restart(ctx, inSRE); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Dex.Restart(ctx, dexUsers); err != nil {
			t.Errorf("restore Dex: %v", err)
		}
	})
	// The groups change with the login, not with Dex.
	time.Sleep(500 * time.Millisecond)
	if _, err := d.kubectlRefused("get", "configmaps", "-n", "default"); err != nil {
		t.Fatalf("dave, in sre but not logged in again: %v", err)
	}

	d.login()
	eventually(t, 10*time.Second, func(context.Context) error {
		_, err := d.kubectl("get", "configmaps", "-n", "default")
		return err
	})
	res, err := d.kubectl("auth", "whoami")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{dave.Email, "clustral:viewers"} {
		if !strings.Contains(res.Stdout, want) {
			t.Errorf("dave whoami = %q, missing %q", res.Stdout, want)
		}
	}
	if got := d.reachable(); !slices.Equal(got, []string{"kind"}) {
		t.Errorf("dave reaches %v, want [kind]", got)
	}

	// Out of the group at the next login, out of the cluster.
	if err := env.Dex.Restart(ctx, dexUsers); err != nil {
		t.Fatal(err)
	}
	d.login()
	eventually(t, 10*time.Second, func(context.Context) error {
		if _, err := d.kubectl("get", "configmaps", "-n", "default"); err == nil {
			return fmt.Errorf("dave, out of sre, still has access")
		}
		return nil
	})
}
