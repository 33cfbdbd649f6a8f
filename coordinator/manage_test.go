package coordinator

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/clustral/clustral/proto"
)

func TestPathAction(t *testing.T) {
	tests := []struct {
		action   string
		allowed  []string
		ok       bool
		wantHint string
	}{
		{"rotate-token", []string{"rotate-token", "revoke-token"}, true, ""},
		{"revoke-token", []string{"rotate-token", "revoke-token"}, true, ""},
		{"disable", []string{"disable", "enable"}, true, ""},
		{"delete", []string{"rotate-token", "revoke-token"}, false, "use rotate-token or revoke-token"},
		{"", []string{"disable", "enable"}, false, "use disable or enable"},
		{"Disable", []string{"disable", "enable"}, false, "use disable or enable"},
	}
	for _, tt := range tests {
		t.Run(tt.action, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/", nil)
			r.SetPathValue("action", tt.action)
			w := httptest.NewRecorder()
			got, ok := pathAction(w, r, tt.allowed...)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if ok {
				if got != tt.action {
					t.Errorf("action = %q, want %q", got, tt.action)
				}
				if w.Body.Len() != 0 {
					t.Errorf("wrote %q for an allowed action", w.Body.String())
				}
				return
			}
			if w.Code != http.StatusNotFound {
				t.Errorf("status = %d, want %d", w.Code, http.StatusNotFound)
			}
			var p proto.Problem
			if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
				t.Fatalf("decode problem: %v", err)
			}
			if want := "unknown action " + tt.action; p.Title != want || p.Hint != tt.wantHint || p.Code != proto.CodeNotFound {
				t.Errorf("problem = %q / %q / %s, want %q / %q / %s", p.Title, p.Hint, p.Code, want, tt.wantHint, proto.CodeNotFound)
			}
		})
	}
}
