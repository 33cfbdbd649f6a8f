package console

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/clustral/clustral/integration/harness"
)

// startChrome starts Chromium trusting Dex's serving certificate.
func startChrome(t *testing.T) *harness.Chrome {
	t.Helper()
	dexCert, err := suite.Env.Dex.ServingCertPEM()
	if err != nil {
		t.Fatal(err)
	}
	return harness.StartChrome(t, harness.ChromeOptions{TrustCertPEMs: [][]byte{dexCert}})
}

// signIn signs u in to the console at coord in tab, through Dex's form,
// and waits for My access.
func signIn(t *testing.T, tab *harness.Tab, coord string, u harness.DexUser) {
	t.Helper()
	tab.Do(t,
		chromedp.Navigate(coord+"/"),
		chromedp.WaitVisible(chromedp.ID("signin")),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.CSS(`input[name="login"]`)),
		chromedp.SendKeys(chromedp.CSS(`input[name="login"]`), u.Email),
		chromedp.SendKeys(chromedp.CSS(`input[name="password"]`), u.Password),
		chromedp.Submit(chromedp.CSS(`input[name="password"]`)),
		chromedp.WaitVisible(chromedp.CSS(`.signout .who`)),
	)
	who := text(t, tab, `.signout .who`)
	if who != u.Email {
		t.Fatalf("signed in as %q, want %s", who, u.Email)
	}
}

// text is the visible text of the first element sel matches.
func text(t *testing.T, tab *harness.Tab, sel string) string {
	t.Helper()
	s, err := chromedp.Run(tab.Ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("text of %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

// noProblems fails t with whatever went wrong in the tabs' pages.
func noProblems(t *testing.T, tabs ...*harness.Tab) {
	t.Helper()
	for _, tab := range tabs {
		for _, p := range tab.Problems() {
			t.Errorf("browser: %s", p)
		}
	}
}

// TestRequestApproveKubectl: alice signs in through Dex's form and asks
// for admin on the cluster; the administrator, in a browser of their
// own, sees the request appear in the queue without reloading and
// approves it with the keyboard; alice's kubectl through the mesh then
// works. The administrator then ends alice's open kubectl get -w from the
// live sessions page, and kubectl sees it end within a second of the
// click. No page logs an error or fails a request.
func TestRequestApproveKubectl(t *testing.T) {
	m := suite.NewMesh(t)
	suite.StartAgent(t, m.JoinToken)
	a := suite.NewUser(t, alice)
	a.MustLogin()
	a.MustUp()
	if _, err := a.RunKubectl("get", "namespaces"); err == nil {
		t.Fatal("alice's kubectl works before any grant")
	}

	chrome := startChrome(t)
	at, rt := chrome.NewTab(), chrome.NewTab()
	signIn(t, at, m.Coord.URL, alice)
	signIn(t, rt, m.Coord.URL, admin)
	if !strings.Contains(text(t, at, "main"), "You cannot reach any cluster") {
		t.Errorf("alice's access before the grant: %q", text(t, at, "main"))
	}

	// The admin's queue is open, and empty, before alice asks.
	rt.Do(t,
		chromedp.Navigate(m.Coord.URL+"/approvals"),
		chromedp.WaitVisible(chromedp.ID("queue-empty")),
	)

	reason := `INC-42 <script>alert(3)</script> "><img src=x onerror=alert(4)>`
	at.Do(t,
		chromedp.Navigate(m.Coord.URL+"/requests"),
		chromedp.WaitVisible(chromedp.ID("rq-role")),
		chromedp.SetValue(chromedp.ID("rq-cluster"), harness.MeshCluster),
		chromedp.SendKeys(chromedp.ID("rq-role"), "admin"),
		chromedp.SetValue(chromedp.ID("rq-duration"), "1h"),
		chromedp.SendKeys(chromedp.ID("rq-reason"), reason),
		chromedp.Click(chromedp.ID("rq-submit")),
		chromedp.WaitVisible(chromedp.CSS(".notice")),
	)
	if got := text(t, at, "td.reason"); got != reason {
		t.Errorf("alice's request shows the reason %q, want the text %q", got, reason)
	}

	// Without a reload, the request appears in the admin's queue.
	ctx, cancel := context.WithTimeout(rt.Ctx, 10*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS("li.request button.approve"))); err != nil {
		t.Fatalf("the request did not appear in the admin's queue: %v", err)
	}
	if got := text(t, rt, "li.request .reason"); got != reason {
		t.Errorf("the queue shows the reason %q, want the text %q", got, reason)
	}
	injected, err := chromedp.Run(rt.Ctx, chromedp.Evaluate[int](`document.querySelectorAll("main script, main img").length`))
	if err != nil || injected != 0 {
		t.Errorf("the reason became markup in the queue: %d elements (%v)", injected, err)
	}
	// With the keyboard only: from the duration, Tab reaches Approve,
	// and Enter presses it.
	rt.Do(t, chromedp.Focus(chromedp.CSS("li.request select")), chromedp.KeyEvent(kb.Tab))
	if focused, err := chromedp.Run(rt.Ctx, chromedp.Evaluate[string](`document.activeElement.className`)); err != nil || focused != "approve" {
		t.Fatalf("Tab from the duration focused %q (%v), want the Approve button", focused, err)
	}
	rt.Do(t, chromedp.KeyEvent(kb.Enter), chromedp.WaitVisible(chromedp.CSS(".notice")))

	harness.MustEventually(t, 10*time.Second, func(context.Context) error {
		_, err := a.RunKubectl("get", "namespaces")
		return err
	})
	at.Do(t, chromedp.Navigate(m.Coord.URL+"/"), chromedp.WaitVisible(chromedp.CSS("strong.role")))
	if got := text(t, at, "section.card h2"); got != harness.MeshCluster {
		t.Errorf("alice's access shows %q, want %s", got, harness.MeshCluster)
	}
	if got := text(t, at, "time[data-until]"); !strings.HasPrefix(got, "in ") {
		t.Errorf("the grant's end reads %q, want a countdown", got)
	}

	// The admin ends alice's open watch from the live sessions page:
	// the watch appears there without a reload, and kubectl sees it end
	// within a second of the click.
	rt.Do(t, chromedp.Navigate(m.Coord.URL+"/admin/live"), chromedp.WaitVisible(chromedp.ID("live-empty")))
	watch := a.StartKubectl(t, nil, nil, "get", "namespaces", "--watch")
	watch.WaitContains(30*time.Second, "default")
	ctx, cancel = context.WithTimeout(rt.Ctx, 15*time.Second)
	defer cancel()
	row := `tr[id^="live-"]`
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(row+" button.deny"))); err != nil {
		t.Fatalf("alice's watch did not appear on the live sessions page: %v", err)
	}
	if got := text(t, rt, row); !strings.Contains(got, alice.Email) || !strings.Contains(got, "watch") || !strings.Contains(got, "namespaces") {
		t.Errorf("the live session reads %q, want alice's watch of namespaces", got)
	}
	clicked := time.Now()
	rt.Do(t, chromedp.Click(chromedp.CSS(row+" button.deny")))
	// kubectl get --watch exits when its watch ends, with status 0.
	watch.WaitExit(10 * time.Second)
	took := time.Since(clicked)
	if took > time.Second {
		t.Errorf("kubectl's watch ended %v after End now, want within 1s\n%s", took, watch)
	}
	t.Logf("End now: kubectl's watch exited %v after the click", took.Round(time.Millisecond))
	rt.Do(t, chromedp.WaitVisible(chromedp.CSS(".notice")), chromedp.WaitVisible(chromedp.ID("live-empty")))

	// The clusters page shows the agent's own report.
	rt.Do(t, chromedp.Navigate(m.Coord.URL+"/admin/clusters"), chromedp.WaitVisible(chromedp.CSS(".agent")))
	if got := text(t, rt, ".agent"); !strings.Contains(got, "ready") || !strings.Contains(got, "online") || !strings.Contains(got, "Last seen") {
		t.Errorf("the clusters page's agent reads %q, want it online and ready", got)
	}
	noProblems(t, at, rt)
}
