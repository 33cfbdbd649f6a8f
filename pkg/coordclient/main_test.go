package coordclient

import (
	"testing"

	"github.com/clustral/clustral/pkg/testkit"
)

// TestMain fails the package's tests if any of them leaves a goroutine
// running.
func TestMain(m *testing.M) { testkit.VerifyNoLeaks(m) }
