package recording

import (
	"testing"

	"github.com/clustral/clustral/pkg/testkit"
)

// TestMain fails the package's tests if any of them leaves a goroutine
// running: the SPDY parsers' goroutines must end with their session.
func TestMain(m *testing.M) { testkit.VerifyNoLeaks(m) }
