package access

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/clustral/clustral/proto"
)

// TestAdminOnly: a user who is not an administrator gets a clear 403 from
// every administrators' route, and from the CLI exit code 4 with the
// coordinator's message, and changes nothing.
func TestAdminOnly(t *testing.T) {
	m := suite.NewMesh(t)
	c, a := suite.NewUser(t, carol), suite.NewUser(t, alice)
	c.MustLogin()
	a.MustLogin()
	asg := m.Assign(t, alice.Email, "viewer")
	want := carol.Email + " is not an administrator"

	t.Run("cli", func(t *testing.T) {
		c := c.For(t)
		for _, args := range [][]string{
			{"roles", "create", "sneaky", "--group", "system:masters"},
			{"roles", "update", "viewer", "--group", "system:masters"},
			{"roles", "delete", "viewer"},
			{"roles", "list"},
			{"clusters", "add", "sneaky"},
			{"clusters", "list"},
			{"clusters", "rotate-token", "kind"},
			{"clusters", "delete", "kind"},
			{"users", "disable", alice.Email},
			{"users", "list"},
			{"assign", "--user", carol.Email, "--role", "editor", "--cluster", "kind"},
			{"unassign", asg.ID},
		} {
			_, stderr, code := c.RunCode(args...)
			if code != 4 || !strings.Contains(stderr, want) {
				t.Errorf("clustral %s: exit %d, stderr %q; want exit 4 and %q", strings.Join(args, " "), code, stderr, want)
			}
		}
	})

	t.Run("api", func(t *testing.T) {
		tok, err := c.SessionToken()
		if err != nil {
			t.Fatal(err)
		}
		v := proto.APIVersion
		for _, route := range []struct {
			method, path string
			body         any
		}{
			{"GET", v + "/clusters", nil},
			{"POST", v + "/clusters", proto.CreateClusterRequest{Name: "sneaky"}},
			{"GET", v + "/clusters/kind", nil},
			{"PUT", v + "/clusters/kind/labels", proto.ClusterLabels{Labels: map[string]string{"env": "x"}}},
			{"POST", v + "/clusters/kind/rotate-token", nil},
			{"POST", v + "/clusters/kind/revoke-token", nil},
			{"DELETE", v + "/clusters/kind", nil},
			{"GET", v + "/roles", nil},
			{"POST", v + "/roles", proto.Role{Name: "sneaky", Groups: []string{"system:masters"}}},
			{"GET", v + "/roles/viewer", nil},
			{"PUT", v + "/roles/viewer", proto.Role{Name: "viewer", Groups: []string{"system:masters"}}},
			{"DELETE", v + "/roles/viewer", nil},
			{"GET", v + "/assignments", nil},
			{"POST", v + "/assignments", proto.Assignment{User: carol.Email, Role: "editor", Cluster: "kind"}},
			{"DELETE", v + "/assignments/" + asg.ID, nil},
			{"GET", v + "/users", nil},
			{"GET", v + "/users/" + alice.Email, nil},
			{"POST", v + "/users/" + alice.Email + "/disable", nil},
			{"POST", v + "/users/" + carol.Email + "/enable", nil},
		} {
			var body io.Reader
			if route.body != nil {
				b, _ := json.Marshal(route.body)
				body = bytes.NewReader(b)
			}
			req, _ := http.NewRequestWithContext(context.Background(), route.method, suite.CoordURL()+route.path, body)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var p proto.Problem
			json.Unmarshal(b, &p)
			if resp.StatusCode != http.StatusForbidden || p.Code != proto.CodeForbidden || p.Detail+p.Title == "" || !strings.Contains(p.Detail+" "+p.Title, want) {
				t.Errorf("%s %s: %s %s; want 403 FORBIDDEN naming %q", route.method, route.path, resp.Status, b, want)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/problem+json") {
				t.Errorf("%s %s: Content-Type %q, want application/problem+json", route.method, route.path, ct)
			}
		}
	})

	// Nothing changed.
	var roles []proto.Role
	m.Admin.MustAPI("GET", "/api/v1/roles", nil, &roles)
	for _, r := range roles {
		if r.Name == "sneaky" || strings.Join(r.Groups, ",") == "system:masters" {
			t.Errorf("role %+v after refused calls", r)
		}
	}
	var asgs []proto.Assignment
	m.Admin.MustAPI("GET", "/api/v1/assignments", nil, &asgs)
	if len(asgs) != 1 || asgs[0].ID != asg.ID {
		t.Errorf("assignments after refused calls: %+v, want only %s", asgs, asg.ID)
	}
	var u proto.User
	m.Admin.MustAPI("GET", "/api/v1/users/"+alice.Email, nil, &u)
	if u.Disabled {
		t.Errorf("alice disabled by a refused call")
	}
	var cl proto.Cluster
	m.Admin.MustAPI("GET", "/api/v1/clusters/kind", nil, &cl)
	if len(cl.Labels) != 0 {
		t.Errorf("cluster labels %v after refused calls", cl.Labels)
	}
}
