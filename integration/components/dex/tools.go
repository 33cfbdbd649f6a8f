//go:build tools

// Package tools pins Dex (v2.45.1), built from the module proxy for the
// integration suite as the real OIDC provider.
package tools

import _ "github.com/dexidp/dex/cmd/dex"
