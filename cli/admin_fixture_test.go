package cli

import (
	"net/netip"
	"time"

	"github.com/clustral/clustral/proto"
)

// IDs in the coordinator's form: a type prefix and 20 hex digits.
const (
	clsProd    = "cls_1f0e2d3c4b5a69788796"
	clsStaging = "cls_2a3b4c5d6e7f80919a0b"
	clsDev     = "cls_3c4d5e6f708192a3b4c5"
	clsNew     = "cls_4d5e6f708192a3b4c5d6"
	rolViewer  = "rol_0a1b2c3d4e5f60718293"
	rolDeploy  = "rol_1b2c3d4e5f6071829304"
	rolAdmin   = "rol_2c3d4e5f607182930415"
	rolNew     = "rol_9e8d7c6b5a4f3e2d1c0b"
	usrAlice   = "usr_5a6b7c8d9e0f1a2b3c4d"
	usrBob     = "usr_6b7c8d9e0f1a2b3c4d5e"
	usrCarol   = "usr_7c8d9e0f1a2b3c4d5e6f"
	devLaptop  = "dev_8d9e0f1a2b3c4d5e6f70"
	devBob     = "dev_a0f1a2b3c4d5e6f70819"
	asgNew     = "asg_b1a2b3c4d5e6f708192a"
	reqPending = "req_c2b3c4d5e6f708192a3b"
	reqActive  = "req_d3c4d5e6f708192a3b4c"
	reqDenied  = "req_e4d5e6f708192a3b4c5d"
	reqNew     = "req_f5e6f708192a3b4c5d6e"
	// Join tokens as the goldens show them (made up; the coordinator's
	// are random).
	joinNew     = "cjt_Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2Fy"
	joinRotated = "cjt_cm90YXRlZHRva2VuZm9ycHJvZGFnZW50c29ubHkx"
)

func adminKey(b byte) proto.Key {
	var k proto.Key
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

func prefixes(s ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, a := range s {
		addr := netip.MustParseAddr(a)
		ps = append(ps, netip.PrefixFrom(addr, addr.BitLen()))
	}
	return ps
}

func at(d time.Duration) time.Time { return fixedNow.Add(d) }

func atp(d time.Duration) *time.Time { t := at(d); return &t }

// The clusters, roles, users, devices and access requests the goldens
// show: the real coordinator is set up with them (setupClusters and the
// like).

func goldenClusters() []proto.Cluster {
	return []proto.Cluster{
		{ID: clsDev, Name: "dev", Created: at(-72 * time.Hour)},
		{ID: clsProd, Name: "prod", Labels: map[string]string{"env": "prod", "team": "payments"}, Created: at(-30 * 24 * time.Hour), Agents: []proto.Agent{
			{NodeID: "agt_0011223344556677889a", Hostname: "prod-node-a", Addresses: prefixes("100.64.0.1", "fd7a:115c:a1e0::1"), Online: true},
			{NodeID: "agt_1122334455667788990a", Hostname: "prod-node-b", Addresses: prefixes("100.64.0.7", "fd7a:115c:a1e0::7"), Online: false},
		}},
		{ID: clsStaging, Name: "staging", Labels: map[string]string{"env": "staging"}, Created: at(-10 * 24 * time.Hour), Agents: []proto.Agent{
			{NodeID: "agt_2233445566778899aa0b", Hostname: "staging-node-a", Addresses: prefixes("100.64.0.3", "fd7a:115c:a1e0::3"), Online: true},
		}},
	}
}

func goldenRoles() []proto.Role {
	return []proto.Role{
		{ID: rolAdmin, Name: "admin", Description: "full control, on request", Groups: []string{"system:masters"}, ApproverGroups: []string{"sre"}, Admin: true},
		{ID: rolDeploy, Name: "dev-deployer", Description: "roll out to dev", Groups: []string{"clustral:edit"}, Restrictions: &proto.Restrictions{
			Namespaces: []string{"dev"}, APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"get", "list", "patch"},
			TimeWindows: []proto.TimeWindow{{Days: []string{"mon", "tue", "wed", "thu", "fri"}, Start: "09:00", End: "18:00", TimeZone: "Europe/Berlin"}},
		}},
		{ID: rolViewer, Name: "viewer", Description: "read-only everywhere", Groups: []string{"clustral:view"}},
	}
}

func goldenUsers() []proto.User {
	return []proto.User{
		{ID: usrAlice, Login: "alice@example.com", Email: "alice@example.com", Name: "Alice Liddell", Groups: []string{"dev", "sre"}, Admin: true, Created: at(-90 * 24 * time.Hour), LastSeen: at(-5 * time.Minute)},
		{ID: usrBob, Login: "bob@example.com", Email: "bob@example.com", Name: "Bob Builder", Groups: []string{"dev"}, Created: at(-60 * 24 * time.Hour), LastSeen: at(-26 * time.Hour)},
		{ID: usrCarol, Login: "carol@example.com", Email: "carol@example.com", Name: "Carol Danvers", Disabled: true, Created: at(-45 * 24 * time.Hour), LastSeen: at(-14 * 24 * time.Hour)},
	}
}

func goldenDevices() []proto.Device {
	return []proto.Device{
		{ID: devLaptop, User: "alice@example.com", Hostname: "alice-laptop", Key: adminKey(1), Addresses: prefixes("100.64.0.2", "fd7a:115c:a1e0::2"), Online: true, Created: at(-time.Hour), Expires: at(7 * time.Hour)},
		{ID: devBob, User: "bob@example.com", Hostname: "bob-desktop", Key: adminKey(3), Addresses: prefixes("100.64.0.5", "fd7a:115c:a1e0::5"), Online: true, Created: at(-3 * time.Hour), Expires: at(5 * time.Hour)},
	}
}

func goldenAccessRequests() []proto.AccessRequest {
	return []proto.AccessRequest{
		{ID: reqPending, User: "bob@example.com", Role: "admin", Cluster: "prod", Reason: "INC-1234: restart the ingress", Duration: proto.Duration(time.Hour),
			State: proto.RequestPending, Created: at(-10 * time.Minute), PendingUntil: at(50 * time.Minute)},
		{ID: reqActive, User: "alice@example.com", Role: "admin", Cluster: "staging", Reason: "load test", Duration: proto.Duration(2 * time.Hour),
			State: proto.RequestApproved, Created: at(-40 * time.Minute), PendingUntil: at(20 * time.Minute), DecidedBy: "carol@example.com", DecidedAt: at(-30 * time.Minute),
			DecisionReason: "ok", GrantExpires: atp(90 * time.Minute)},
		{ID: reqDenied, User: "bob@example.com", Role: "admin", Cluster: "prod", Reason: "curious", Duration: proto.Duration(8 * time.Hour),
			State: proto.RequestDenied, Created: at(-3 * time.Hour), PendingUntil: at(-2 * time.Hour), DecidedBy: "alice@example.com", DecidedAt: at(-170 * time.Minute),
			DecisionReason: "use staging"},
	}
}
