package console

import "testing"

func TestPageDataCurrent(t *testing.T) {
	for _, tc := range []struct {
		nav, href string
		want      bool
	}{
		{"/", "/", true},
		{"/connect", "/", false},
		{"/connect", "/connect", true},
		{"/admin/roles/oncall/edit", "/admin/roles", true},
		{"/admin/roles/oncall/edit", "/admin", true},
		{"/admin/roles/oncall/edit", "/admin/users", false},
		{"/admin/rolesx", "/admin/roles", false},
		{"/requests", "/admin", false},
	} {
		d := &pageData{Nav: tc.nav}
		if got := d.Current(tc.href); got != tc.want {
			t.Errorf("page %s: Current(%q) = %v, want %v", tc.nav, tc.href, got, tc.want)
		}
	}
}
