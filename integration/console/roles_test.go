package console

import (
	"slices"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/clustral/clustral/proto"
)

// TestRoleTimeWindows: in the role editor, an administrator gives a role
// a time window with the mouse and keyboard; the coordinator's refusal of
// its start shows beside that window, the form kept as typed; fixed, the
// window is saved and listed on the roles page; ticked Remove, it goes.
func TestRoleTimeWindows(t *testing.T) {
	m := suite.NewMesh(t)
	m.Admin.MustAPI("POST", "/api/v1/roles", proto.Role{Name: "oncall", Groups: []string{"view"}}, nil)
	chrome := startChrome(t)
	rt := chrome.NewTab()
	signIn(t, rt, m.Coord.URL, admin)

	weekdays := []string{"mon", "tue", "wed", "thu", "fri"}
	actions := []chromedp.Action[chromedp.Void]{
		chromedp.Navigate(m.Coord.URL + "/admin/roles/oncall/edit"),
		chromedp.WaitVisible(chromedp.ID("window-start-0")),
	}
	for _, d := range weekdays {
		actions = append(actions, chromedp.Click(chromedp.CSS(`input[name="window_days_0"][value="`+d+`"]`)))
	}
	actions = append(actions,
		chromedp.SendKeys(chromedp.ID("window-start-0"), "9"),
		chromedp.SendKeys(chromedp.ID("window-end-0"), "18:00"),
		chromedp.SendKeys(chromedp.ID("window-tz-0"), "Europe/Berlin"),
		chromedp.Click(chromedp.CSS(`form.card button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.ID("err-window-0")),
	)
	rt.Do(t, actions...)
	if got := text(t, rt, "#err-window-0"); !strings.Contains(got, `Time window 1: start: "9" is not a time of day`) {
		t.Errorf("beside the window: %q, want the coordinator's sentence naming its start", got)
	}
	ticked, err := chromedp.Run(rt.Ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll('input[name="window_days_0"]:checked')).map(e => e.value)`))
	if err != nil || !slices.Equal(ticked, weekdays) {
		t.Errorf("after the refusal the ticked days are %v (%v), want %v as ticked", ticked, err, weekdays)
	}
	if tz, err := chromedp.Run(rt.Ctx, chromedp.Value(chromedp.ID("window-tz-0"))); err != nil || tz != "Europe/Berlin" {
		t.Errorf("after the refusal the time zone reads %q (%v)", tz, err)
	}
	// The refusal is answered 400, which the browser counts as a failed
	// request; that one is expected, and nothing else.
	for _, p := range rt.Problems() {
		if !strings.Contains(p, "400") || !strings.HasSuffix(p, "/admin/roles/oncall/edit)") && !strings.HasSuffix(p, "/admin/roles/oncall/edit") {
			t.Errorf("browser: %s", p)
		}
	}

	rt.Do(t,
		chromedp.SetValue(chromedp.ID("window-start-0"), "09:00"),
		chromedp.Click(chromedp.CSS(`form.card button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(".notice")),
	)
	const want = "mon,tue,wed,thu,fri 09:00-18:00 Europe/Berlin"
	if got := text(t, rt, "main"); !strings.Contains(got, want) {
		t.Errorf("the roles page does not list the window %s:\n%s", want, got)
	}
	var ro proto.Role
	m.Admin.MustAPI("GET", "/api/v1/roles/oncall", nil, &ro)
	if ro.Restrictions == nil || len(ro.Restrictions.TimeWindows) != 1 || ro.Restrictions.TimeWindows[0].String() != want {
		t.Fatalf("oncall's restrictions = %+v, want the window %s", ro.Restrictions, want)
	}

	rt.Do(t,
		chromedp.Navigate(m.Coord.URL+"/admin/roles/oncall/edit"),
		chromedp.WaitVisible(chromedp.ID("window-start-1")),
		// With the keyboard: Space ticks Remove.
		chromedp.Focus(chromedp.CSS(`input[name="window_remove_0"]`)),
		chromedp.KeyEvent(" "),
	)
	if on, err := chromedp.Run(rt.Ctx, chromedp.Evaluate[bool](`document.querySelector('input[name="window_remove_0"]').checked`)); err != nil || !on {
		t.Fatalf("Space did not tick Remove (%v)", err)
	}
	rt.Do(t,
		chromedp.Click(chromedp.CSS(`form.card button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(".notice")),
	)
	var after proto.Role
	m.Admin.MustAPI("GET", "/api/v1/roles/oncall", nil, &after)
	if after.Restrictions != nil && len(after.Restrictions.TimeWindows) > 0 {
		t.Errorf("after Remove, oncall's windows = %v", after.Restrictions.TimeWindows)
	}
	noProblems(t, rt)
}
