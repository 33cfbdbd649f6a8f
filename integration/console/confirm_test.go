package console

import (
	"testing"

	"github.com/chromedp/chromedp"
)

// TestHeadlessConfirmInBrowser: `clustral login --no-browser`, confirmed
// in a real browser. The confirmation page's form must pass the
// coordinator's origin check as a browser sends it: under the page's
// earlier Referrer-Policy no-referrer, Chromium sent "Origin: null" and
// the confirmation was refused as posted from another site.
func TestHeadlessConfirmInBrowser(t *testing.T) {
	_, l, _ := suite.StartLogin(t, alice, nil, "--no-browser")

	tab := startChrome(t).NewTab()
	tab.Do(t,
		chromedp.Navigate(l.AuthURL),
		chromedp.WaitVisible(chromedp.CSS(`input[name="login"]`)),
		chromedp.SendKeys(chromedp.CSS(`input[name="login"]`), alice.Email),
		chromedp.SendKeys(chromedp.CSS(`input[name="password"]`), alice.Password),
		chromedp.Submit(chromedp.CSS(`input[name="password"]`)),
		chromedp.WaitVisible(chromedp.CSS(`input[name="user_code"]`)),
		chromedp.SendKeys(chromedp.CSS(`input[name="user_code"]`), l.UserCode),
		chromedp.Click(chromedp.CSS(`button[value="confirm"]`)),
		chromedp.WaitNotPresent(chromedp.CSS(`input[name="user_code"]`)),
	)
	if h := text(t, tab, "h1"); h != "Signed in as "+alice.Email {
		t.Fatalf("after confirming in the browser: %q: %s", h, text(t, tab, "body"))
	}
	l.Wait(t, "as "+alice.Email)
	noProblems(t, tab)
}
