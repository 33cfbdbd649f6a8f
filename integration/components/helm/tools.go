//go:build tools

// Package tools pins helm (v3.22.0), built from the module proxy against the
// same Kubernetes libraries as clustral, for the integration suite's client
// tests.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
