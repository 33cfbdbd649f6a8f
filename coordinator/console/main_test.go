package console_test

import (
	"testing"

	"github.com/clustral/clustral/pkg/testkit"
)

func TestMain(m *testing.M) { testkit.VerifyNoLeaks(m) }
