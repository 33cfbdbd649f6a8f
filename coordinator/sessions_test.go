package coordinator

import (
	"net/http"
	"testing"

	"github.com/clustral/clustral/proto"
)

// TestSessionsListAndEnd: a user sees their own sessions only, marked
// current, and ends one by its id with the devices under it; another
// user's id is unknown to them.
func TestSessionsListAndEnd(t *testing.T) {
	e := newTestEnv(t)
	first := e.login("alice@example.com")
	second := e.login("alice@example.com")
	bob := e.login("bob@example.com")
	e.must("POST", "/api/v1/devices", first.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}, nil)

	var list []proto.SessionInfo
	e.must("GET", "/api/v1/sessions", second.Token, nil, &list)
	if len(list) != 2 {
		t.Fatalf("alice lists %d sessions, want her 2: %+v", len(list), list)
	}
	var other proto.SessionInfo
	for _, s := range list {
		if s.Current {
			continue
		}
		other = s
	}
	if other.ID == "" || other.Devices != 1 || list[0].Current == list[1].Current {
		t.Fatalf("sessions %+v: want one current and the other with its device", list)
	}
	if status, p := e.call("DELETE", "/api/v1/sessions/"+other.ID, bob.Token, nil, nil); status != http.StatusNotFound {
		t.Errorf("bob ending alice's session = %d %+v, want 404", status, p)
	}
	e.must("DELETE", "/api/v1/sessions/"+other.ID, second.Token, nil, nil)
	if status, _ := e.call("GET", "/api/v1/whoami", first.Token, nil, nil); status != http.StatusUnauthorized {
		t.Errorf("the ended session still answers: %d", status)
	}
	var devs []proto.Device
	e.must("GET", "/api/v1/devices", second.Token, nil, &devs)
	if len(devs) != 0 {
		t.Errorf("the ended session's device is still listed: %+v", devs)
	}
	ev := e.waitAudit(proto.AuditSessionEnded)
	if ev.Actor != "alice@example.com" || ev.Metadata["devices"] != "1" {
		t.Errorf("audit event %+v, want alice's with devices 1", ev)
	}
}
