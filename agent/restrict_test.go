package agent

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

func restricted(role string, rs proto.Restrictions, groups ...string) proto.RoleGrant {
	return proto.RoleGrant{Role: role, Groups: groups, Restrictions: &rs}
}

func TestRestrictions(t *testing.T) {
	tests := []struct {
		name           string
		rs             proto.Restrictions
		method, target string
		want           proto.ErrorCode // "" means allowed
	}{
		{"namespace allowed", proto.Restrictions{Namespaces: []string{"dev", "staging"}}, "GET", "/api/v1/namespaces/dev/pods", ""},
		{"namespace denied", proto.Restrictions{Namespaces: []string{"dev", "staging"}}, "GET", "/api/v1/namespaces/kube-system/pods", proto.CodeNamespaceNotAllowed},
		{"namespace object itself", proto.Restrictions{Namespaces: []string{"dev"}}, "GET", "/api/v1/namespaces/dev", ""},
		{"cluster scope denied", proto.Restrictions{Namespaces: []string{"dev"}}, "GET", "/api/v1/nodes", proto.CodeNamespaceNotAllowed},
		{"all-namespace list denied", proto.Restrictions{Namespaces: []string{"dev"}}, "GET", "/api/v1/pods", proto.CodeNamespaceNotAllowed},
		{"cluster scope allowed by \"\"", proto.Restrictions{Namespaces: []string{"dev", ""}}, "GET", "/api/v1/nodes", ""},
		{"legacy watch path namespace denied", proto.Restrictions{Namespaces: []string{"dev"}}, "GET", "/api/v1/watch/namespaces/prod/pods", proto.CodeNamespaceNotAllowed},

		{"core group allowed", proto.Restrictions{APIGroups: []string{""}}, "GET", "/api/v1/namespaces/dev/pods", ""},
		{"group denied", proto.Restrictions{APIGroups: []string{""}}, "GET", "/apis/apps/v1/namespaces/dev/deployments", proto.CodeResourceNotAllowed},
		{"group allowed", proto.Restrictions{APIGroups: []string{"apps"}}, "GET", "/apis/apps/v1/namespaces/dev/deployments", ""},
		{"any group", proto.Restrictions{APIGroups: []string{"*"}}, "GET", "/apis/batch/v1/jobs", ""},

		{"resource allowed", proto.Restrictions{Resources: []string{"pods"}}, "GET", "/api/v1/namespaces/dev/pods/web", ""},
		{"resource denied", proto.Restrictions{Resources: []string{"pods"}}, "GET", "/api/v1/namespaces/dev/secrets/s", proto.CodeResourceNotAllowed},
		{"any resource", proto.Restrictions{Resources: []string{"*"}}, "GET", "/api/v1/namespaces/dev/pods/web/log", ""},
		{"subresource not covered by resource", proto.Restrictions{Resources: []string{"pods"}}, "POST", "/api/v1/namespaces/dev/pods/web/exec", proto.CodeResourceNotAllowed},
		{"subresource allowed", proto.Restrictions{Resources: []string{"pods", "pods/log"}}, "GET", "/api/v1/namespaces/dev/pods/web/log", ""},
		{"other subresource denied", proto.Restrictions{Resources: []string{"pods/log"}}, "POST", "/api/v1/namespaces/dev/pods/web/exec", proto.CodeResourceNotAllowed},
		{"*/subresource", proto.Restrictions{Resources: []string{"*/scale"}}, "PATCH", "/apis/apps/v1/namespaces/dev/deployments/d/scale", ""},
		{"*/subresource not the resource", proto.Restrictions{Resources: []string{"*/scale"}}, "PATCH", "/apis/apps/v1/namespaces/dev/deployments/d", proto.CodeResourceNotAllowed},

		{"verb allowed", proto.Restrictions{Verbs: []string{"get", "list", "watch"}}, "GET", "/api/v1/namespaces/dev/pods?watch=true", ""},
		{"verb denied", proto.Restrictions{Verbs: []string{"get", "list", "watch"}}, "DELETE", "/api/v1/namespaces/dev/pods/web", proto.CodeVerbNotAllowed},
		{"deletecollection is its own verb", proto.Restrictions{Verbs: []string{"delete"}}, "DELETE", "/api/v1/namespaces/dev/pods", proto.CodeVerbNotAllowed},
		{"any verb", proto.Restrictions{Verbs: []string{"*"}}, "DELETE", "/api/v1/namespaces/dev/pods", ""},
		{"websocket exec is create", proto.Restrictions{Verbs: []string{"get"}}, "GET+upgrade", "/api/v1/namespaces/dev/pods/web/exec", proto.CodeVerbNotAllowed},

		{"name allowed", proto.Restrictions{ResourceNames: []string{"web"}}, "GET", "/api/v1/namespaces/dev/pods/web", ""},
		{"name denied", proto.Restrictions{ResourceNames: []string{"web"}}, "GET", "/api/v1/namespaces/dev/pods/db", proto.CodeResourceNotAllowed},
		{"list without name denied", proto.Restrictions{ResourceNames: []string{"web"}}, "GET", "/api/v1/namespaces/dev/pods", proto.CodeResourceNotAllowed},
		{"watch of one name by field selector", proto.Restrictions{ResourceNames: []string{"web"}}, "GET", "/api/v1/namespaces/dev/pods?watch=1&fieldSelector=metadata.name%3Dweb", ""},

		{"dot segments never match a restricted grant", proto.Restrictions{Namespaces: []string{"dev"}}, "GET", "/api/v1/namespaces/dev/pods/../../kube-system/pods", proto.CodeResourceNotAllowed},
		{"encoded dot segments", proto.Restrictions{Namespaces: []string{"dev"}}, "GET", "/api/v1/namespaces/dev/pods/%2e%2e/%2E%2E/kube-system/pods", proto.CodeResourceNotAllowed},
		{"empty segment", proto.Restrictions{Namespaces: []string{"dev", ""}}, "GET", "/api/v1/namespaces//pods", proto.CodeResourceNotAllowed},
		{"leading double slash", proto.Restrictions{Namespaces: []string{"dev"}}, "GET", "//api/v1/namespaces/dev/pods", proto.CodeResourceNotAllowed},
		{"encoded slash", proto.Restrictions{Namespaces: []string{"dev"}}, "GET", "/api/v1/namespaces/dev/pods/a%2Fb", proto.CodeResourceNotAllowed},
		{"discovery ignores scope", proto.Restrictions{Namespaces: []string{"dev"}, Resources: []string{"pods"}, Verbs: []string{"get"}}, "POST", "/version", ""},

		// "*" and an empty Resources never include the sensitive
		// subresources: through nodes/proxy a GET with an upgrade is a
		// shell on any pod of the node.
		{"* excludes nodes/proxy upgrade", proto.Restrictions{Verbs: []string{"get", "list", "watch"}, Resources: []string{"*"}}, "GET+upgrade", "/api/v1/nodes/n1/proxy/exec/dev/web/c?command=sh", proto.CodeResourceNotAllowed},
		{"* excludes nodes/proxy", proto.Restrictions{Resources: []string{"*"}}, "GET", "/api/v1/nodes/n1/proxy/pods", proto.CodeResourceNotAllowed},
		{"no resources exclude nodes/proxy", proto.Restrictions{Verbs: []string{"get", "list", "watch"}}, "GET+upgrade", "/api/v1/nodes/n1/proxy/exec/dev/web/c", proto.CodeResourceNotAllowed},
		{"namespace-only excludes exec", proto.Restrictions{Namespaces: []string{"dev"}}, "POST", "/api/v1/namespaces/dev/pods/web/exec?command=sh", proto.CodeResourceNotAllowed},
		{"* excludes pods/exec", proto.Restrictions{Resources: []string{"*"}}, "POST", "/api/v1/namespaces/dev/pods/web/exec", proto.CodeResourceNotAllowed},
		{"* excludes pods/attach", proto.Restrictions{Resources: []string{"*"}}, "POST", "/api/v1/namespaces/dev/pods/web/attach", proto.CodeResourceNotAllowed},
		{"* excludes pods/portforward", proto.Restrictions{Resources: []string{"*"}}, "GET+upgrade", "/api/v1/namespaces/dev/pods/web/portforward", proto.CodeResourceNotAllowed},
		{"* excludes pods/proxy", proto.Restrictions{Resources: []string{"*"}}, "GET", "/api/v1/namespaces/dev/pods/web/proxy/", proto.CodeResourceNotAllowed},
		{"* excludes services/proxy", proto.Restrictions{Resources: []string{"*"}}, "GET", "/api/v1/namespaces/dev/services/web:80/proxy/admin", proto.CodeResourceNotAllowed},
		{"* excludes serviceaccounts/token", proto.Restrictions{Resources: []string{"*"}}, "POST", "/api/v1/namespaces/dev/serviceaccounts/default/token", proto.CodeResourceNotAllowed},
		{"* excludes pods/ephemeralcontainers", proto.Restrictions{Resources: []string{"*"}}, "PATCH", "/api/v1/namespaces/dev/pods/web/ephemeralcontainers", proto.CodeResourceNotAllowed},
		{"* includes pods/log", proto.Restrictions{Resources: []string{"*"}}, "GET", "/api/v1/namespaces/dev/pods/web/log", ""},
		{"* includes deployments/scale", proto.Restrictions{Resources: []string{"*"}}, "PATCH", "/apis/apps/v1/namespaces/dev/deployments/d/scale", ""},
		{"named pods/exec", proto.Restrictions{Resources: []string{"*", "pods/exec"}}, "POST", "/api/v1/namespaces/dev/pods/web/exec", ""},
		{"named */exec", proto.Restrictions{Resources: []string{"*/exec"}}, "GET+upgrade", "/api/v1/namespaces/dev/pods/web/exec", ""},
		{"named nodes/proxy", proto.Restrictions{Verbs: []string{"get"}, Resources: []string{"nodes/proxy"}}, "GET+upgrade", "/api/v1/nodes/n1/proxy/exec/dev/web/c", ""},
		{"nodes/proxy is not services/proxy", proto.Restrictions{Resources: []string{"nodes/proxy"}}, "GET", "/api/v1/namespaces/dev/services/web/proxy/", proto.CodeResourceNotAllowed},
		{"named serviceaccounts/token", proto.Restrictions{Resources: []string{"serviceaccounts/token"}}, "POST", "/api/v1/namespaces/dev/serviceaccounts/default/token", ""},
		{"time windows alone allow exec", proto.Restrictions{TimeWindows: []proto.TimeWindow{{Start: "00:00", End: "24:00"}}}, "POST", "/api/v1/namespaces/dev/pods/web/exec", ""},

		// Non-resource URLs other than discovery must be listed.
		{"non-resource URL refused by namespace limit", proto.Restrictions{Namespaces: []string{"dev"}}, "GET", "/logs/kube-apiserver.log", proto.CodeResourceNotAllowed},
		{"metrics refused by verb limit", proto.Restrictions{Verbs: []string{"get"}}, "GET", "/metrics", proto.CodeResourceNotAllowed},
		{"pprof refused by resource limit", proto.Restrictions{Resources: []string{"*"}}, "GET", "/debug/pprof/profile", proto.CodeResourceNotAllowed},
		{"root refused", proto.Restrictions{Namespaces: []string{"dev"}}, "GET", "/", proto.CodeResourceNotAllowed},
		{"listed non-resource URL", proto.Restrictions{Namespaces: []string{"dev"}, NonResourceURLs: []string{"/metrics"}}, "GET", "/metrics", ""},
		{"listed prefix", proto.Restrictions{Namespaces: []string{"dev"}, NonResourceURLs: []string{"/logs/*"}}, "GET", "/logs/kube-apiserver.log", ""},
		{"prefix is not the path", proto.Restrictions{Namespaces: []string{"dev"}, NonResourceURLs: []string{"/logs/*"}}, "GET", "/logsx", proto.CodeResourceNotAllowed},
		{"exact is not a prefix", proto.Restrictions{NonResourceURLs: []string{"/metrics"}}, "GET", "/metrics/slis", proto.CodeResourceNotAllowed},
		{"any non-resource URL", proto.Restrictions{Namespaces: []string{"dev"}, NonResourceURLs: []string{"*"}}, "GET", "/debug/pprof/", ""},
		{"listed URL, verb refused", proto.Restrictions{Verbs: []string{"get"}, NonResourceURLs: []string{"*"}}, "POST", "/metrics", proto.CodeVerbNotAllowed},
		{"dot segment under a listed prefix", proto.Restrictions{NonResourceURLs: []string{"/metrics*"}}, "GET", "/metrics/../logs/x", proto.CodeResourceNotAllowed},
		{"time windows alone allow non-resource URLs", proto.Restrictions{TimeWindows: []proto.TimeWindow{{Start: "00:00", End: "24:00"}}}, "GET", "/metrics", ""},
		{"all kinds together", proto.Restrictions{Namespaces: []string{"dev"}, APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"patch"}, ResourceNames: []string{"web"}}, "PATCH", "/apis/apps/v1/namespaces/dev/deployments/web", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var info requestInfo
			if m, ok := strings.CutSuffix(tt.method, "+upgrade"); ok {
				info = reqInfo(t, m, tt.target, "Connection", "Upgrade", "Upgrade", "websocket")
			} else {
				info = reqInfo(t, tt.method, tt.target)
			}
			peer := device(1, "alice@example.com", restricted("r", tt.rs, "g"))
			_, d := authorize("prod", peer, info, t0)
			var got proto.ErrorCode
			if d != nil {
				got = d.code
				if d.status != http.StatusForbidden {
					t.Errorf("status %d, want 403", d.status)
				}
			}
			if got != tt.want {
				t.Errorf("%s %s: code %q, want %q (%v)", tt.method, tt.target, got, tt.want, d)
			}
		})
	}
}

func TestDenialMessage(t *testing.T) {
	peer := device(1, "alice@example.com", restricted("viewer", proto.Restrictions{Namespaces: []string{"dev", "staging"}}))
	_, d := authorize("prod", peer, reqInfo(t, "DELETE", "/api/v1/namespaces/kube-system/pods"), t0)
	want := "alice@example.com may not deletecollection pods in namespace 'kube-system' on cluster 'prod': role 'viewer' allows namespaces dev, staging. Ask an admin, or run: clustral access request --cluster prod --role <role>"
	if d == nil || d.msg != want {
		t.Errorf("message\n%v\nwant\n%s", d, want)
	}
}

// TestLimitMessages: a refusal by the rules for sensitive subresources,
// non-resource URLs and unclean paths says what the role lacks.
func TestLimitMessages(t *testing.T) {
	tests := []struct {
		rs             proto.Restrictions
		method, target string
		want           string
	}{
		{proto.Restrictions{Resources: []string{"*"}, Verbs: []string{"get"}}, "GET", "/api/v1/nodes/n1/proxy/pods",
			"alice@example.com may not get nodes/proxy 'n1' at cluster scope on cluster 'prod': role 'r' allows resources *, and * does not include nodes/proxy, which must be named."},
		{proto.Restrictions{Namespaces: []string{"dev"}}, "POST", "/api/v1/namespaces/dev/pods/web/exec",
			"alice@example.com may not create pods/exec 'web' in namespace 'dev' on cluster 'prod': role 'r' does not name pods/exec, and a role with limits allows the subresources exec, attach, portforward, proxy, ephemeralcontainers and serviceaccounts/token only where its resources name them."},
		{proto.Restrictions{Resources: []string{"pods", "pods/log"}}, "POST", "/api/v1/namespaces/dev/pods/web/exec",
			"role 'r' allows resources pods, pods/log."},
		{proto.Restrictions{Namespaces: []string{"dev"}}, "GET", "/metrics",
			"alice@example.com may not get /metrics on cluster 'prod': role 'r' allows no non-resource URL but discovery (/api, /apis, /version, /openapi)."},
		{proto.Restrictions{NonResourceURLs: []string{"/healthz", "/logs/*"}}, "GET", "/metrics",
			"role 'r' allows the non-resource URLs /healthz, /logs/* besides discovery."},
		{proto.Restrictions{Namespaces: []string{"dev"}}, "GET", "/api/v1/namespaces/dev/pods/../../kube-system/secrets",
			"role 'r' cannot judge the path /api/v1/namespaces/dev/pods/../../kube-system/secrets (it has a . or .. segment, //, an encoded /, or no meaning to the API server)."},
	}
	for _, tt := range tests {
		_, d := authorize("prod", device(1, "alice@example.com", restricted("r", tt.rs)), reqInfo(t, tt.method, tt.target), t0)
		if d == nil || !strings.Contains(d.msg, tt.want) {
			t.Errorf("%s %s: message\n%v\nwant it to contain\n%s", tt.method, tt.target, d, tt.want)
		}
	}
}

// TestMostSpecificCode: of several refusing grants, the one that got
// furthest (verb, then resource, then namespace, then time) speaks.
func TestMostSpecificCode(t *testing.T) {
	verbOnly := restricted("reader", proto.Restrictions{Verbs: []string{"get"}})
	resource := restricted("logs", proto.Restrictions{Resources: []string{"pods/log"}})
	namespace := restricted("dev", proto.Restrictions{Namespaces: []string{"dev"}})
	window := restricted("oncall", proto.Restrictions{TimeWindows: []proto.TimeWindow{{Start: "00:00", End: "01:00"}}})
	del := reqInfo(t, "DELETE", "/api/v1/namespaces/prod/pods/web")
	tests := []struct {
		grants []proto.RoleGrant
		code   proto.ErrorCode
		role   string
	}{
		{[]proto.RoleGrant{verbOnly}, proto.CodeVerbNotAllowed, "reader"},
		{[]proto.RoleGrant{verbOnly, resource}, proto.CodeResourceNotAllowed, "logs"},
		{[]proto.RoleGrant{namespace, resource, verbOnly}, proto.CodeNamespaceNotAllowed, "dev"},
		{[]proto.RoleGrant{verbOnly, namespace, window, resource}, proto.CodeOutsideTimeWindow, "oncall"},
	}
	for _, tt := range tests {
		_, d := authorize("prod", device(1, "alice@example.com", tt.grants...), del, t0)
		if d == nil || d.code != tt.code || !strings.Contains(d.msg, "role '"+tt.role+"'") {
			t.Errorf("%d grants: %v, want %s from role %s", len(tt.grants), d, tt.code, tt.role)
		}
		if len(tt.grants) > 1 && d != nil && !strings.Contains(d.msg, "no other role") {
			t.Errorf("message does not say the other roles refuse too: %s", d.msg)
		}
	}
}

// TestOnlyAllowingGrantsImpersonated: groups and KubeUser come only from
// the grants that allow the request at hand.
func TestOnlyAllowingGrantsImpersonated(t *testing.T) {
	view := restricted("view", proto.Restrictions{Verbs: []string{"get", "list", "watch"}}, "viewers")
	ops := restricted("ops", proto.Restrictions{Namespaces: []string{"ops"}}, "operators")
	ops.KubeUser = "ops-bot"
	admin := restricted("admin", proto.Restrictions{TimeWindows: []proto.TimeWindow{{Start: "09:00", End: "17:00"}}}, "admins")
	peer := device(1, "alice@example.com", view, ops, admin)
	tests := []struct {
		method, target string
		now            time.Time
		user           string
		groups         []string
	}{
		{"GET", "/api/v1/namespaces/dev/pods", t0.Add(-6 * time.Hour), "alice@example.com", []string{"viewers", "system:authenticated"}},
		{"GET", "/api/v1/namespaces/ops/pods", t0.Add(-6 * time.Hour), "ops-bot", []string{"viewers", "operators", "system:authenticated"}},
		{"DELETE", "/api/v1/namespaces/ops/pods/x", t0.Add(-6 * time.Hour), "ops-bot", []string{"operators", "system:authenticated"}},
		{"DELETE", "/api/v1/namespaces/dev/pods/x", t0, "alice@example.com", []string{"admins", "system:authenticated"}},
		{"GET", "/api/v1/namespaces/dev/pods", t0, "alice@example.com", []string{"viewers", "admins", "system:authenticated"}},
		{"GET", "/version", t0.Add(-6 * time.Hour), "ops-bot", []string{"viewers", "operators", "system:authenticated"}},
	}
	for _, tt := range tests {
		imp, d := authorize("prod", peer, reqInfo(t, tt.method, tt.target), tt.now)
		if d != nil {
			t.Errorf("%s %s at %s: %v", tt.method, tt.target, tt.now.Format("15:04"), d)
			continue
		}
		if imp.user != tt.user || !slices.Equal(imp.groups, tt.groups) {
			t.Errorf("%s %s at %s: %q %q, want %q %q", tt.method, tt.target, tt.now.Format("15:04"), imp.user, imp.groups, tt.user, tt.groups)
		}
	}
}

func TestTimeWindows(t *testing.T) {
	// 2026-05-01 is a Friday.
	utc := func(day, hh, mm int) time.Time { return time.Date(2026, 5, day, hh, mm, 0, 0, time.UTC) }
	weekdays := []string{"mon", "tue", "wed", "thu", "fri"}
	tests := []struct {
		name string
		w    proto.TimeWindow
		now  time.Time
		in   bool
	}{
		{"inside", proto.TimeWindow{Start: "09:00", End: "18:00"}, utc(1, 12, 0), true},
		{"at start", proto.TimeWindow{Start: "09:00", End: "18:00"}, utc(1, 9, 0), true},
		{"at end is outside", proto.TimeWindow{Start: "09:00", End: "18:00"}, utc(1, 18, 0), false},
		{"before", proto.TimeWindow{Start: "09:00", End: "18:00"}, utc(1, 8, 59), false},
		{"weekday inside", proto.TimeWindow{Days: weekdays, Start: "09:00", End: "18:00"}, utc(1, 12, 0), true},
		{"weekend outside", proto.TimeWindow{Days: weekdays, Start: "09:00", End: "18:00"}, utc(2, 12, 0), false},
		{"whole day", proto.TimeWindow{Days: []string{"sat"}, Start: "00:00", End: "24:00"}, utc(2, 23, 59), true},
		{"spans midnight, evening", proto.TimeWindow{Start: "22:00", End: "06:00"}, utc(1, 23, 0), true},
		{"spans midnight, morning", proto.TimeWindow{Start: "22:00", End: "06:00"}, utc(2, 5, 59), true},
		{"spans midnight, day", proto.TimeWindow{Start: "22:00", End: "06:00"}, utc(1, 12, 0), false},
		// Friday night's window runs into Saturday morning, not Friday's.
		{"night belongs to start day", proto.TimeWindow{Days: []string{"fri"}, Start: "22:00", End: "06:00"}, utc(2, 3, 0), true},
		{"night not from previous day", proto.TimeWindow{Days: []string{"fri"}, Start: "22:00", End: "06:00"}, utc(1, 3, 0), false},
		{"sunday night into monday", proto.TimeWindow{Days: []string{"sun"}, Start: "23:00", End: "01:00"}, utc(4, 0, 30), true},
		// Berlin is UTC+2 in May: 09:00-18:00 there is 07:00-16:00 UTC.
		{"Berlin inside", proto.TimeWindow{Start: "09:00", End: "18:00", TimeZone: "Europe/Berlin"}, utc(1, 7, 0), true},
		{"Berlin outside (17:00 UTC is 19:00 there)", proto.TimeWindow{Start: "09:00", End: "18:00", TimeZone: "Europe/Berlin"}, utc(1, 17, 0), false},
		{"UTC would be inside", proto.TimeWindow{Start: "09:00", End: "18:00"}, utc(1, 17, 0), true},
		// Friday 23:30 UTC is Saturday 01:30 in Berlin.
		{"day of week in the zone", proto.TimeWindow{Days: []string{"fri"}, Start: "00:00", End: "24:00", TimeZone: "Europe/Berlin"}, utc(1, 23, 30), false},
		{"day of week in the zone, sat", proto.TimeWindow{Days: []string{"sat"}, Start: "00:00", End: "24:00", TimeZone: "Europe/Berlin"}, utc(1, 23, 30), true},
		{"New York", proto.TimeWindow{Days: []string{"fri"}, Start: "20:00", End: "21:00", TimeZone: "America/New_York"}, utc(2, 0, 30), true},
		{"bad zone is closed", proto.TimeWindow{Start: "00:00", End: "24:00", TimeZone: "Mars/Olympus"}, utc(1, 12, 0), false},
		{"bad time is closed", proto.TimeWindow{Start: "9:00", End: "24:00"}, utc(1, 12, 0), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := proto.Restrictions{TimeWindows: []proto.TimeWindow{tt.w}}
			peer := device(1, "alice@example.com", restricted("oncall", rs, "oncall"))
			peer.Identity.Expires = time.Time{}
			_, d := authorize("prod", peer, reqInfo(t, "GET", "/api/v1/namespaces/dev/pods"), tt.now)
			if got := d == nil; got != tt.in {
				t.Fatalf("at %s: allowed = %v, want %v (%v)", tt.now.Format(time.RFC3339), got, tt.in, d)
			}
			if d != nil && d.code != proto.CodeOutsideTimeWindow {
				t.Errorf("code %s, want %s", d.code, proto.CodeOutsideTimeWindow)
			}
			// Time windows apply to discovery as well.
			if _, d := authorize("prod", peer, reqInfo(t, "GET", "/apis"), tt.now); (d == nil) != tt.in {
				t.Errorf("GET /apis: allowed = %v, want %v", d == nil, tt.in)
			}
		})
	}
}

func TestTimeWindowMessage(t *testing.T) {
	rs := proto.Restrictions{TimeWindows: []proto.TimeWindow{{Days: []string{"mon", "fri"}, Start: "09:00", End: "18:00", TimeZone: "Europe/Berlin"}}}
	_, d := authorize("prod", device(1, "alice@example.com", restricted("oncall", rs)), reqInfo(t, "GET", "/api/v1/namespaces/dev/pods/web"), t0.Add(6*time.Hour))
	want := "alice@example.com may not get pods 'web' in namespace 'dev' on cluster 'prod': role 'oncall' applies only mon,fri 09:00-18:00 Europe/Berlin (it is fri 20:00 there now)."
	if d == nil || !strings.HasPrefix(d.msg, want) {
		t.Errorf("message\n%v\nwant prefix\n%s", d, want)
	}
}

func BenchmarkAuthorize(b *testing.B) {
	grants := []proto.RoleGrant{
		restricted("view", proto.Restrictions{Verbs: []string{"get", "list", "watch"}}, "viewers"),
		restricted("dev", proto.Restrictions{
			Namespaces: []string{"dev", "staging"}, APIGroups: []string{"", "apps"},
			Resources: []string{"pods", "pods/log", "deployments"}, Verbs: []string{"*"},
			TimeWindows: []proto.TimeWindow{{Days: []string{"mon", "tue", "wed", "thu", "fri"}, Start: "08:00", End: "20:00", TimeZone: "Europe/Berlin"}},
		}, "developers"),
	}
	peer := device(1, "alice@example.com", grants...)
	for _, bc := range []struct{ name, method, target string }{
		{"allowed", "PATCH", "/apis/apps/v1/namespaces/dev/deployments/web"},
		{"denied", "DELETE", "/api/v1/namespaces/kube-system/pods/web"},
		{"unrestricted", "GET", "/api/v1/namespaces/dev/pods/web"},
	} {
		info := reqInfo(b, bc.method, bc.target)
		p := peer
		if bc.name == "unrestricted" {
			p = device(1, "alice@example.com", grant("view", "viewers"))
		}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				authorize("prod", p, info, t0)
			}
		})
	}
}
