package console

import (
	"slices"
	"testing"
)

// TestPageDataCurrent: the header marks the link of the page's section,
// and the admin menu on every admin page.
func TestPageDataCurrent(t *testing.T) {
	links := []string{"/", "/connect", "/requests", "/admin", "/admin/roles", "/admin/users"}
	marked := map[string][]string{ // page → the links marked on it
		"/":                        {"/"},
		"/connect":                 {"/connect"},
		"/requests":                {"/requests"},
		"/admin/roles/oncall/edit": {"/admin", "/admin/roles"},
		"/admin/rolesx":            {"/admin"},
		"/signin":                  nil,
	}
	for nav, want := range marked {
		d := &pageData{Nav: nav}
		got := slices.DeleteFunc(slices.Clone(links), func(l string) bool { return !d.Current(l) })
		if !slices.Equal(got, want) {
			t.Errorf("page %s marks %v, want %v", nav, got, want)
		}
	}
}
