package coordinator

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/clustral/clustral/coordinator/store"
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

// updateStore runs Update's fn with no transaction and returns its error.
type updateStore struct{ store.Store }

func (updateStore) Update(fn func(store.Tx) error) error { return fn(nil) }

func TestCommit(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		ok        bool
		wantTitle string
	}{
		{"stored", nil, true, ""},
		{"failed", errors.New("disk full"), false, "delete role: internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Server{store: updateStore{}, log: slog.New(slog.DiscardHandler)}
			w := httptest.NewRecorder()
			ran := false
			ok := s.commit(w, "delete role", func(store.Tx) error { ran = true; return tt.err })
			if !ran || ok != tt.ok {
				t.Fatalf("ran = %v, ok = %v, want true, %v", ran, ok, tt.ok)
			}
			if ok {
				if w.Body.Len() != 0 {
					t.Errorf("wrote %q after a stored change", w.Body.String())
				}
				return
			}
			var p proto.Problem
			if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
				t.Fatalf("decode problem: %v", err)
			}
			if w.Code != http.StatusInternalServerError || p.Code != proto.CodeInternal || p.Title != tt.wantTitle {
				t.Errorf("got %d %s %q, want %d %s %q", w.Code, p.Code, p.Title, http.StatusInternalServerError, proto.CodeInternal, tt.wantTitle)
			}
		})
	}
}
