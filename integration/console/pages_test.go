package console

import (
	"bytes"
	"context"
	"image"
	"image/color/palette"
	"image/draw"
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// ScreenshotsEnv names the directory TestPages writes its screenshots to
// (make screenshots sets it to docs/console); unset, it writes none.
const ScreenshotsEnv = "CLUSTRAL_SCREENSHOTS"

// widths are the window widths every page must work at: a laptop and a
// phone.
var widths = []struct {
	name          string
	width, height int64
}{{"1280", 1280, 800}, {"390", 390, 844}}

// TestPages opens every page of the console, with content, at both
// widths: none logs an error or fails a request, none is wider than the
// window, and every control has a label. With CLUSTRAL_SCREENSHOTS set
// it writes each page's screenshot there.
func TestPages(t *testing.T) {
	m := suite.NewMesh(t)
	var ar proto.AccessRequest
	a := suite.NewUser(t, alice)
	a.MustLogin()
	m.Assign(t, alice.Email, "admin")
	a.MustAPI("POST", "/api/v1/access-requests", proto.CreateAccessRequest{Role: "admin", Cluster: harness.MeshCluster,
		Duration: proto.Duration(2 * 3600e9), Reason: "INC-1234: restart the ingress"}, &ar)
	shipRecording(t, m, "s-1")
	// A role with time windows, for the role editor.
	m.Admin.MustAPI("POST", "/api/v1/roles", proto.Role{Name: "oncall", Description: "Weekday on-call, weekend mornings", Groups: []string{"view"},
		Restrictions: &proto.Restrictions{Namespaces: []string{"prod"}, TimeWindows: []proto.TimeWindow{
			{Days: []string{"mon", "tue", "wed", "thu", "fri"}, Start: "08:00", End: "20:00", TimeZone: "Europe/Berlin"},
			{Days: []string{"sat", "sun"}, Start: "10:00", End: "14:00", TimeZone: "Europe/Berlin"},
		}}}, nil)
	// A live session for the live sessions page: alice's watch.
	suite.StartAgent(t, m.JoinToken)
	a.MustUp()
	harness.MustEventually(t, 30*time.Second, func(context.Context) error {
		_, err := a.RunKubectl("get", "namespaces")
		return err
	})
	a.StartKubectl(t, nil, nil, "get", "pods", "--all-namespaces", "--watch")

	chrome := startChrome(t)
	at, rt := chrome.NewTab(), chrome.NewTab()
	signIn(t, rt, m.Coord.URL, admin)
	// The sign-in page, before alice signs in.
	at.Do(t, chromedp.Navigate(m.Coord.URL+"/signin"), chromedp.WaitVisible(chromedp.ID("signin")))
	shoot(t, at, "signin")
	signIn(t, at, m.Coord.URL, alice)

	for _, p := range []struct {
		name, path string
		tab        *harness.Tab
	}{
		{"access", "/", at},
		{"connect", "/connect", at},
		{"requests", "/requests", at},
		{"devices", "/devices", at},
		{"approvals", "/approvals", rt},
		{"admin-clusters", "/admin/clusters", rt},
		{"admin-users", "/admin/users", rt},
		{"admin-user", "/admin/users/" + alice.Email, rt},
		{"admin-roles", "/admin/roles", rt},
		{"admin-role-edit", "/admin/roles/oncall/edit", rt},
		{"admin-assignments", "/admin/assignments", rt},
		{"admin-audit", "/admin/audit", rt},
		{"admin-live", "/admin/live", rt},
		{"admin-sessions", "/admin/sessions", rt},
		{"admin-session", "/admin/sessions/s-1", rt},
	} {
		t.Run(p.name, func(t *testing.T) {
			p.tab.Do(t, chromedp.Navigate(m.Coord.URL+p.path), chromedp.WaitVisible(chromedp.CSS("main h1")))
			if p.name == "admin-live" {
				ctx, cancel := context.WithTimeout(p.tab.Ctx, 15*time.Second)
				defer cancel()
				if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`tr[id^="live-"]`))); err != nil {
					t.Fatalf("alice's watch is not on the live sessions page: %v", err)
				}
			}
			checkPage(t, p.tab)
			shoot(t, p.tab, p.name)
			noProblems(t, p.tab)
		})
	}
	// The admin menu, opened and closed with the keyboard alone.
	t.Run("admin-menu", func(t *testing.T) {
		rt.Do(t, chromedp.Navigate(m.Coord.URL+"/admin/roles/oncall/edit"), chromedp.WaitVisible(chromedp.CSS("main h1")))
		for _, w := range widths {
			rt.Do(t, chromedp.EmulateViewport(w.width, w.height),
				chromedp.Focus(chromedp.CSS("#admin-menu summary")), chromedp.KeyEvent(kb.Enter),
				chromedp.WaitVisible(chromedp.CSS(`#admin-menu a[href="/admin/roles"][aria-current="page"]`)))
			over, err := chromedp.Run(rt.Ctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth - window.innerWidth`))
			if err != nil || over > 0 {
				t.Errorf("at %d px the open menu makes the page %d px too wide (%v)", w.width, over, err)
			}
			if w.name == "390" {
				shoot(t, rt, "admin-menu")
			}
			// Escape closes it and leaves the focus on its summary. (A
			// closed <details> keeps its content's boxes, so ask it.)
			rt.Do(t, chromedp.KeyEvent(kb.Escape))
			open, err := chromedp.Run(rt.Ctx, chromedp.Evaluate[bool](`document.getElementById("admin-menu").open || document.activeElement !== document.querySelector("#admin-menu summary")`))
			if err != nil || open {
				t.Errorf("at %d px Escape left the menu open or moved the focus (%v)", w.width, err)
			}
		}
		noProblems(t, rt)
	})
	// The role editor's time windows, further down.
	t.Run("admin-role-windows", func(t *testing.T) {
		rt.Do(t, chromedp.Navigate(m.Coord.URL+"/admin/roles/oncall/edit"), chromedp.WaitVisible(chromedp.CSS("main h1")))
		shoot(t, rt, "admin-role-windows", ".windows")
		noProblems(t, rt)
	})
}

// checkPage checks the page in tab at both widths: no sideways scrolling
// of the page, and a label for every visible form control.
func checkPage(t *testing.T, tab *harness.Tab) {
	t.Helper()
	for _, w := range widths {
		tab.Do(t, chromedp.EmulateViewport(w.width, w.height))
		over, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth - window.innerWidth`))
		if err != nil || over > 0 {
			t.Errorf("at %d px the page is %d px too wide (%v)", w.width, over, err)
		}
		if w.width >= 1280 {
			// Every item of the header (brand, links, menu, sign-out) on
			// one line: their vertical centres within a few pixels.
			spread, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[int](`(() => {
				const ys = Array.from(document.querySelectorAll("header .brand, header .links > li > a, header summary, header .signout"))
					.filter(e => e.getClientRects().length)
					.map(e => { const r = e.getBoundingClientRect(); return r.top + r.height / 2; });
				return ys.length ? Math.round(Math.max(...ys) - Math.min(...ys)) : 0;
			})()`))
			if err != nil || spread > 6 {
				t.Errorf("at %d px the header wraps: its items' centres are %d px apart (%v)", w.width, spread, err)
			}
		}
		unlabelled, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("input:not([type=hidden]), select, textarea, button"))
			.filter(e => !(e.labels && e.labels.length) && !e.getAttribute("aria-label") && !e.textContent.trim())
			.map(e => e.outerHTML)`))
		if err != nil || len(unlabelled) > 0 {
			t.Errorf("controls without a label at %d px: %v (%v)", w.width, unlabelled, err)
		}
	}
}

// shoot writes the page in tab at both widths to the screenshot
// directory, if there is one; with scrollTo, scrolled to the first
// element that selector matches.
func shoot(t *testing.T, tab *harness.Tab, name string, scrollTo ...string) {
	t.Helper()
	dir := os.Getenv(ScreenshotsEnv)
	if dir == "" {
		return
	}
	for _, w := range widths {
		tab.Do(t, chromedp.EmulateViewport(w.width, w.height))
		for _, sel := range scrollTo {
			tab.Do(t, chromedp.ScrollIntoView(chromedp.CSS(sel)))
		}
		shot, err := chromedp.Run(tab.Ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatal(err)
		}
		small, err := smallPNG(shot)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(dir, name+"-"+w.name+".png")
		if err := os.WriteFile(f, small, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// smallPNG re-encodes a screenshot with the web-safe palette, about a
// quarter of the size, so the committed screenshots stay small; text
// stays sharp (no dithering).
func smallPNG(b []byte) ([]byte, error) {
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	p := image.NewPaletted(img.Bounds(), palette.WebSafe)
	draw.Draw(p, img.Bounds(), img, img.Bounds().Min, draw.Src)
	var out bytes.Buffer
	if err := (&png.Encoder{CompressionLevel: png.BestCompression}).Encode(&out, p); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
