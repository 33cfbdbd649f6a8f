package spool

import (
	"testing"

	"github.com/clustral/clustral/pkg/testkit"
)

// TestMain fails the package's tests if any of them leaves a goroutine
// running: everything the code under test starts must be owned and stopped.
func TestMain(m *testing.M) { testkit.VerifyNoLeaks(m) }
