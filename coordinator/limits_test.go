package coordinator

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/clustral/clustral/proto"
)

// postRaw sends body as it is and returns the status and problem.
func (e *testEnv) postRaw(method, path, token, body string) (int, proto.Problem) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.ts.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var p proto.Problem
	json.NewDecoder(resp.Body).Decode(&p)
	return resp.StatusCode, p
}

func TestAPIDecodesStrictlyAndBoundsText(t *testing.T) {
	e := newTestEnv(t)
	admin := e.login("admin@example.com")
	e.must("POST", "/api/v1/clusters", admin.Token, proto.CreateClusterRequest{Name: "prod"}, nil)
	e.must("POST", "/api/v1/roles", admin.Token, proto.Role{Name: "viewer", Groups: []string{"view"}}, nil)
	alice := e.login("alice@example.com")
	long := func(n int) string { return strings.Repeat("x", n) }
	many := func(n int) string {
		return `["` + strings.Repeat(`g",  "`, n-1) + `g"]`
	}
	tests := []struct {
		name, method, path, token, body string
		want                            string // in the problem's title
	}{
		{"typo in a role's field", "POST", "/api/v1/roles", admin.Token,
			`{"name":"r1","groups":["view"],"descriptoin":"typo"}`, `unknown field "descriptoin"`},
		{"unknown nested field", "POST", "/api/v1/roles", admin.Token,
			`{"name":"r1","groups":["view"],"restrictions":{"namespace":["a"]}}`, `unknown field "namespace"`},
		{"trailing object", "POST", "/api/v1/roles", admin.Token,
			`{"name":"r1","groups":["view"]} {"name":"r2","groups":["view"]}`, "unexpected data after the JSON object"},
		{"trailing garbage", "POST", "/api/v1/clusters", admin.Token,
			`{"name":"c1"}xyz`, "unexpected data after the JSON object"},
		{"empty body", "POST", "/api/v1/clusters", admin.Token, ``, "empty request body"},
		{"wrong type names the field", "POST", "/api/v1/roles", admin.Token,
			`{"name":"r1","groups":"view"}`, `field "groups"`},
		{"huge description", "POST", "/api/v1/roles", admin.Token,
			`{"name":"r1","groups":["view"],"description":"` + long(maxDescription+1) + `"}`, "description is 1001 bytes, over the 1000-byte limit"},
		{"huge description on update", "PUT", "/api/v1/roles/viewer", admin.Token,
			`{"groups":["view"],"description":"` + long(1<<19) + `"}`, "description is"},
		{"long group", "POST", "/api/v1/roles", admin.Token,
			`{"name":"r1","groups":["` + long(maxIdentifier+1) + `"]}`, "groups[0] is"},
		{"too many groups", "POST", "/api/v1/roles", admin.Token,
			`{"name":"r1","groups":` + many(maxListItems+1) + `}`, "groups has 65 entries"},
		{"too many restricted namespaces", "POST", "/api/v1/roles", admin.Token,
			`{"name":"r1","groups":["view"],"restrictions":{"namespaces":` + many(maxListItems+1) + `}}`, "restrictions.namespaces has 65 entries"},
		{"long label value", "POST", "/api/v1/clusters", admin.Token,
			`{"name":"c1","labels":{"env":"` + long(maxLabelValue+1) + `"}}`, `labels["env"] is`},
		{"long relabel value", "PUT", "/api/v1/clusters/prod/labels", admin.Token,
			`{"labels":{"env":"` + long(maxLabelValue+1) + `"}}`, `labels["env"] is`},
		{"long group in an assignment", "POST", "/api/v1/assignments", admin.Token,
			`{"group":"` + long(maxIdentifier+1) + `","role":"viewer","cluster":"prod"}`, "group is"},
		{"long request reason", "POST", "/api/v1/access-requests", alice.Token,
			`{"role":"viewer","cluster":"prod","duration":"1h","reason":"` + long(maxReason+1) + `"}`, "reason is 1001 bytes"},
		{"unknown field in an access request", "POST", "/api/v1/access-requests", alice.Token,
			`{"role":"viewer","cluster":"prod","duration":"1h","reason":"x","reson":"y"}`, `unknown field "reson"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, p := e.postRaw(tt.method, tt.path, tt.token, tt.body)
			if status != http.StatusBadRequest || p.Code != proto.CodeBadRequest || !strings.Contains(p.Title, tt.want) || p.Hint == "" {
				t.Fatalf("= %d %+v, want 400 %s with %q and a hint", status, p, proto.CodeBadRequest, tt.want)
			}
		})
	}
	e.srv.mu.Lock()
	defer e.srv.mu.Unlock()
	if len(e.srv.clusters) != 1 || len(e.srv.roles) != 1 || len(e.srv.assignments) != 0 || len(e.srv.requests) != 0 {
		t.Fatal("refused input changed state")
	}
	if ro := e.srv.rolesByName["viewer"]; ro.Description != "" || e.srv.clustersByName["prod"].Labels != nil {
		t.Fatal("a refused update was stored")
	}
}
