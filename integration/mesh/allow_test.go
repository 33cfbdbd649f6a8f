package mesh

import (
	"strings"
	"testing"

	"github.com/clustral/clustral/integration/harness"
)

// TestAllowRulesAgainstDex: a coordinator that admits the group ops and
// the user carol lets bob (in ops) and carol log in with Dex's ID tokens,
// and the configured administrator; alice, whose verified example.com
// address Dex vouches for, is refused with a sentence naming the rules.
func TestAllowRulesAgainstDex(t *testing.T) {
	suite.StartCoordinatorWith(t, "--allow-group", "ops", "--allow-user", "carol@example.com")
	for _, tt := range []struct {
		name string
		u    *harness.TestUser
		ok   bool
	}{
		{"group", suite.NewUser(t, bob), true},
		{"user", suite.NewUser(t, carol), true},
		{"administrator", suite.NewUser(t, admin), true},
		{"nobody's rule", suite.NewUser(t, alice), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.u.TryLogin()
			if tt.ok && err != nil {
				t.Fatalf("login refused: %v", err)
			}
			if !tt.ok && (err == nil || !strings.Contains(err.Error(), "may not log in to this coordinator: no allow rule")) {
				t.Fatalf("login = %v, want a refusal naming the allow rules", err)
			}
		})
	}
}
