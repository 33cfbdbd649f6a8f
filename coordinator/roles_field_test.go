package coordinator

import (
	"net/http"
	"strings"
	"testing"

	"github.com/clustral/clustral/proto"
)

// TestRoleFieldErrors: a refused role names the field that caused it,
// so a form can show the problem beside it.
func TestRoleFieldErrors(t *testing.T) {
	e := newTestEnv(t)
	admin := e.login("admin@example.com")
	e.must("POST", "/api/v1/roles", admin.Token, proto.Role{Name: "viewer", Groups: []string{"view"}}, nil)
	for _, tc := range []struct {
		name  string
		role  proto.Role
		field string
	}{
		{"bad name", proto.Role{Name: "Not Valid", Groups: []string{"g"}}, "name"},
		{"taken name", proto.Role{Name: "viewer", Groups: []string{"g"}}, "name"},
		{"long description", proto.Role{Name: "r", Description: strings.Repeat("x", maxDescription+1), Groups: []string{"g"}}, "description"},
		{"no group", proto.Role{Name: "r"}, "groups"},
		{"long group", proto.Role{Name: "r", Groups: []string{"g", strings.Repeat("g", maxIdentifier+1)}}, "groups"},
		{"bad verb", proto.Role{Name: "r", Groups: []string{"g"}, Restrictions: &proto.Restrictions{Verbs: []string{"steal"}}}, "restrictions.verbs"},
		{"bad resource first", proto.Role{Name: "r", Groups: []string{"g"}, Restrictions: &proto.Restrictions{Verbs: []string{"steal"}, Resources: []string{"pods/*"}}}, "restrictions.verbs"},
		{"bad window", proto.Role{Name: "r", Groups: []string{"g"}, Restrictions: &proto.Restrictions{TimeWindows: []proto.TimeWindow{{Start: "25:00", End: "26:00"}}}}, "restrictions.time_windows"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, p := e.call("POST", "/api/v1/roles", admin.Token, tc.role, nil)
			if status < 400 || p == nil || p.Field != tc.field {
				t.Errorf("POST role = %d %+v, want the field %q named", status, p, tc.field)
			}
		})
	}
	if status, p := e.call("PUT", "/api/v1/roles/viewer", admin.Token, proto.Role{Name: "viewer", Groups: []string{"view"}, Restrictions: &proto.Restrictions{Resources: []string{"pods/*"}}}, nil); status != http.StatusBadRequest || p.Field != "restrictions.resources" {
		t.Errorf("PUT role with a bad resource = %d %+v, want restrictions.resources", status, p)
	}
}
