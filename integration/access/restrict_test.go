package access

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// TestRestrictions: each kind of role restriction, set with the CLI,
// lets kubectl through to the real apiserver for what it allows, and
// refuses what it does not with the matching X-Clustral-Error-Code and a
// message kubectl shows that names the limit.
func TestRestrictions(t *testing.T) {
	m := suite.NewMeshWithAgent(t)
	ns, other := suite.NewNamespace(t), suite.NewNamespace(t)
	suite.CreateConfigMap(t, ns, "allowed")
	suite.CreateConfigMap(t, ns, "another")
	suite.CreateConfigMap(t, other, "allowed")

	c := suite.NewUser(t, carol)
	c.MustLogin() // users exist from their first login
	m.Admin.MustRun("roles", "create", "limited", "--group", "clustral:editors", "--namespace", ns)
	m.Admin.MustRun("assign", "--user", carol.Email, "--role", "limited", "--cluster", "kind")
	c.MustUp()

	now := time.Now().UTC()
	// A one-hour window twelve hours away never includes the test.
	away := fmt.Sprintf("daily %02d:00-%02d:00 UTC", (now.Hour()+12)%24, (now.Hour()+13)%24)

	tests := []struct {
		name    string
		flags   []string // roles update flags besides --group
		allowed []string // a kubectl command the role allows; nil for none
		denied  []string
		code    proto.ErrorCode
		message string // in kubectl's error output
	}{
		{
			name:    "namespace",
			flags:   []string{"--namespace", ns},
			allowed: []string{"get", "configmaps", "-n", ns},
			denied:  []string{"get", "configmaps", "-n", other},
			code:    proto.CodeNamespaceNotAllowed,
			message: fmt.Sprintf("%s may not list configmaps in namespace '%s' on cluster 'kind': role 'limited' allows namespaces %s", carol.Email, other, ns),
		},
		{
			name:    "resource",
			flags:   []string{"--resource", "configmaps"},
			allowed: []string{"get", "configmaps", "-n", ns},
			denied:  []string{"get", "secrets", "-n", ns},
			code:    proto.CodeResourceNotAllowed,
			message: fmt.Sprintf("%s may not list secrets in namespace '%s' on cluster 'kind': role 'limited' allows resources configmaps", carol.Email, ns),
		},
		{
			name:    "verb",
			flags:   []string{"--verb", "get,list"},
			allowed: []string{"get", "configmap", "allowed", "-n", ns},
			denied:  []string{"delete", "configmap", "allowed", "-n", ns},
			code:    proto.CodeVerbNotAllowed,
			message: fmt.Sprintf("%s may not delete configmaps 'allowed' in namespace '%s' on cluster 'kind': role 'limited' allows verbs get, list", carol.Email, ns),
		},
		{
			name:    "resource name",
			flags:   []string{"--resource", "configmaps", "--resource-name", "allowed"},
			allowed: []string{"get", "configmap", "allowed", "-n", ns},
			denied:  []string{"get", "configmap", "another", "-n", ns},
			code:    proto.CodeResourceNotAllowed,
			message: fmt.Sprintf("%s may not get configmaps 'another' in namespace '%s' on cluster 'kind': role 'limited' allows only the names 'allowed'", carol.Email, ns),
		},
		{
			// Through nodes/proxy a GET is the kubelet's API, exec
			// included: "*" does not name it.
			name:    "resources * without nodes/proxy",
			flags:   []string{"--resource", "*", "--verb", "get,list,watch"},
			allowed: []string{"get", "configmaps", "-n", ns},
			denied:  []string{"get", "--raw", "/api/v1/nodes/kwok-node-0/proxy/pods"},
			code:    proto.CodeResourceNotAllowed,
			message: fmt.Sprintf("%s may not get nodes/proxy 'kwok-node-0' at cluster scope on cluster 'kind': role 'limited' allows resources *, and * does not include nodes/proxy, which must be named", carol.Email),
		},
		{
			name:    "resources * without services/proxy",
			flags:   []string{"--resource", "*"},
			allowed: []string{"get", "configmaps", "-n", ns},
			denied:  []string{"get", "--raw", "/api/v1/namespaces/" + ns + "/services/web:80/proxy/admin"},
			code:    proto.CodeResourceNotAllowed,
			message: fmt.Sprintf("may not get services/proxy 'web:80' in namespace '%s' on cluster 'kind': role 'limited' allows resources *, and * does not include services/proxy, which must be named", ns),
		},
		{
			name:    "non-resource URLs",
			flags:   []string{"--namespace", ns},
			allowed: []string{"get", "--raw", "/version"},
			denied:  []string{"get", "--raw", "/metrics"},
			code:    proto.CodeResourceNotAllowed,
			message: fmt.Sprintf("%s may not get /metrics on cluster 'kind': role 'limited' allows no non-resource URL but discovery (/api, /apis, /version, /openapi)", carol.Email),
		},
		{
			name:    "listed non-resource URL",
			flags:   []string{"--namespace", ns, "--non-resource-url", "/healthz"},
			allowed: []string{"get", "--raw", "/healthz"},
			denied:  []string{"get", "--raw", "/metrics"},
			code:    proto.CodeResourceNotAllowed,
			message: "role 'limited' allows the non-resource URLs /healthz besides discovery",
		},
		{
			name:    "time window including now",
			flags:   []string{"--window", "daily 00:00-24:00 UTC", "--namespace", ns},
			allowed: []string{"get", "configmaps", "-n", ns},
			// The namespace limit tells this role from the one before.
			denied:  []string{"get", "configmaps", "-n", other},
			code:    proto.CodeNamespaceNotAllowed,
			message: "role 'limited' allows namespaces " + ns,
		},
		{
			name:    "time window excluding now",
			flags:   []string{"--window", away},
			denied:  []string{"get", "configmaps", "-n", ns},
			code:    proto.CodeOutsideTimeWindow,
			message: "role 'limited' applies only " + away,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m.Admin.MustRun(append([]string{"roles", "update", "limited", "--group", "clustral:editors"}, tt.flags...)...)
			// The role reaches the agent in a map delta.
			var last harness.Refusal
			harness.MustEventually(t, 10*time.Second, func(context.Context) error {
				r, err := c.KubectlRefused(tt.denied...)
				if err != nil {
					return err
				}
				last = r
				if r.Code != tt.code {
					return fmt.Errorf("kubectl %v: code %q, want %q; message: %s", tt.denied, r.Code, tt.code, r.Message)
				}
				return nil
			})
			t.Logf("kubectl %v: %s: %s", tt.denied, last.Code, last.Message)
			if !strings.Contains(last.Message, tt.message) {
				t.Errorf("kubectl %v: message\n%s\nwant it to contain\n%s", tt.denied, last.Message, tt.message)
			}
			if !strings.Contains(last.Message, "Forbidden") {
				t.Errorf("kubectl %v: message\n%s\nwant Forbidden", tt.denied, last.Message)
			}
			if tt.allowed != nil {
				if _, err := c.RunKubectl(tt.allowed...); err != nil {
					t.Errorf("allowed by the role: %v", err)
				}
			}
		})
	}
}
