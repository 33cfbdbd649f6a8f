// Package siem tests audit export end to end: a real coordinator
// streaming its audit log to a real rsyslogd (RFC 5424 over TLS, octet
// counting) and to an OTLP/HTTP receiver that decodes with the official
// OTLP protobuf types, through receiver outages and a coordinator
// restart.
package siem

import (
	"os"
	"testing"

	"github.com/clustral/clustral/integration/harness"
)

var admin = harness.DexUser{Email: "admin@example.com", Password: "admin-pw", Groups: []string{"platform"}}

const (
	oidcClient = "clustral"
	oidcSecret = "coordinator-secret-0123456789"
)

var env *harness.Env

// TestMain starts Dex only: the tests log in to real coordinators, and
// their administrative calls are the audit events exported.
func TestMain(m *testing.M) {
	opts := harness.Options{
		SkipKubernetes: true,
		Dex: &harness.DexOptions{
			Users:   []harness.DexUser{admin},
			Clients: []harness.DexClient{{ID: oidcClient, Secret: oidcSecret, RedirectURIs: []string{"http://127.0.0.1/oidc/callback"}}},
		},
	}
	os.Exit(harness.Main(m, opts, func(e *harness.Env) { env = e }))
}
