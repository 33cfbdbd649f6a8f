//go:build tools

// Package tools pins k9s (v0.50.16), built from the module proxy for the
// integration suite's client tests.
package tools

import _ "github.com/derailed/k9s"
