package coordinator

import (
	"strings"
	"testing"

	"github.com/clustral/clustral/proto"
)

// TestRoleRecordingValidatedAndDelivered: a role's recording policy is
// checked when it is written and reaches the agents in the role's grants.
func TestRoleRecordingValidatedAndDelivered(t *testing.T) {
	e := newAccessEnv(t)
	for _, tt := range []struct {
		name string
		role proto.Role
		want string
	}{
		{"unknown policy", proto.Role{Name: "broken", Groups: []string{"g"}, Recording: "always"}, `recording policy "always" is not one of off, best-effort, required`},
		{"stdin without recording", proto.Role{Name: "broken", Groups: []string{"g"}, RecordStdin: true}, "records stdin but records no sessions"},
		{"stdin with recording off", proto.Role{Name: "broken", Groups: []string{"g"}, Recording: proto.RecordingOff, RecordStdin: true}, "records stdin but records no sessions"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if status, p := e.call("POST", "/api/v1/roles", e.admin.Token, tt.role, nil); status != 400 || p.Code != proto.CodeBadRequest || !strings.Contains(p.Title+p.Detail, tt.want) {
				t.Fatalf("create %+v = %d %+v, want 400 naming %s", tt.role, status, p, tt.want)
			}
		})
	}
	e.must("POST", "/api/v1/assignments", e.admin.Token, proto.Assignment{User: "alice@example.com", Role: "viewer", Cluster: "prod"}, nil)
	e.agentMap.next()
	e.must("PUT", "/api/v1/roles/viewer", e.admin.Token, proto.Role{Groups: []string{"viewers"}, Recording: proto.RecordingRequired, RecordStdin: true}, nil)
	m := e.agentMap.next()
	if len(m.Peers) != 1 || m.Peers[0].Identity.Roles[0].Recording != proto.RecordingRequired || !m.Peers[0].Identity.Roles[0].RecordStdin {
		t.Fatalf("role update delta = %+v", m)
	}
	var got proto.Role
	e.must("GET", "/api/v1/roles/viewer", e.admin.Token, nil, &got)
	if got.Recording != proto.RecordingRequired || !got.RecordStdin {
		t.Fatalf("stored role = %+v", got)
	}
}
