package harness

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// ChromiumPath is Debian's Chromium, which .ci/run installs.
const ChromiumPath = "/usr/bin/chromium"

// Chrome is a headless Chromium driven over the DevTools protocol
// (chromedp), with a fresh profile in a temporary directory. StartChrome
// stops it when the test ends.
type Chrome struct {
	t       testing.TB
	browser context.Context
}

// ChromeOptions configure StartChrome.
type ChromeOptions struct {
	// TrustCertPEMs are serving certificates (PEM) the browser accepts
	// although no CA it knows signed them, such as Dex's: it is told
	// their public keys' hashes, and nothing else is trusted more.
	TrustCertPEMs [][]byte
}

// StartChrome starts Chromium for t; without it installed t fails.
func StartChrome(t testing.TB, o ChromeOptions) *Chrome {
	t.Helper()
	if _, err := os.Stat(ChromiumPath); err != nil {
		t.Fatalf("no Chromium at %s (apt-get install chromium, as .ci/run does): %v", ChromiumPath, err)
	}
	var spki []string
	for _, p := range o.TrustCertPEMs {
		h, err := spkiHash(p)
		if err != nil {
			t.Fatal(err)
		}
		spki = append(spki, h)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(ChromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	}
	if len(spki) > 0 {
		opts = append(opts, chromedp.Flag("ignore-certificate-errors-spki-list", strings.Join(spki, ",")))
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	browser, cancelBrowser := chromedp.NewContext(alloc)
	// The first call starts the browser.
	if err := chromedp.Do(browser); err != nil {
		cancelBrowser()
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc() // waits for the browser process to exit
	})
	return &Chrome{t: t, browser: browser}
}

// spkiHash is the base64 SHA-256 of the public key of the certificate in
// pemBytes, as Chromium's --ignore-certificate-errors-spki-list takes it.
func spkiHash(pemBytes []byte) (string, error) {
	b, _ := pem.Decode(pemBytes)
	if b == nil {
		return "", fmt.Errorf("no PEM certificate")
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return "", err
	}
	h := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(h[:]), nil
}

// Tab is one tab in a browser context of its own (its own cookies, as a
// separate person's browser). It records what a page should never do:
// log an error to the console, throw, violate its CSP, or fail a request.
type Tab struct {
	// Ctx runs chromedp actions in the tab.
	Ctx context.Context

	mu       sync.Mutex
	problems []string
}

// NewTab opens a tab in a new browser context; the test's end closes it.
func (c *Chrome) NewTab() *Tab {
	c.t.Helper()
	tab := &Tab{}
	ctx, cancel := chromedp.NewContext(c.browser, chromedp.WithNewBrowserContext(), chromedp.WithListener(tab.watch))
	c.t.Cleanup(cancel)
	tab.Ctx = ctx
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		c.t.Fatalf("open a tab: %v", err)
	}
	if _, err := chromedp.Call(ctx, log.Enable, cdp.Empty{}); err != nil {
		c.t.Fatalf("open a tab: %v", err)
	}
	return tab
}

// watch records the tab's problems.
func (tab *Tab) watch(ev any) {
	var p string
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
			var args []string
			for _, a := range ev.Args {
				args = append(args, string(a.Value)+a.Description)
			}
			p = "console error: " + strings.Join(args, " ")
		}
	case *runtime.EventExceptionThrown:
		p = "exception: " + ev.ExceptionDetails.Text
		if ev.ExceptionDetails.Exception != nil {
			p += " " + ev.ExceptionDetails.Exception.Description
		}
	case *log.EventEntryAdded:
		if ev.Entry.Level == log.EntryLevelError {
			p = fmt.Sprintf("%s error: %s (%s)", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL)
		}
	case *network.EventLoadingFailed:
		// A request the page itself ended (navigating away from an open
		// event stream) is not a failure.
		if !ev.Canceled {
			p = fmt.Sprintf("request failed: %s %s", ev.ErrorText, ev.BlockedReason)
		}
	case *network.EventResponseReceived:
		if ev.Response.Status >= 400 {
			p = fmt.Sprintf("request answered %d: %s", ev.Response.Status, ev.Response.URL)
		}
	}
	if p != "" {
		tab.mu.Lock()
		tab.problems = append(tab.problems, p)
		tab.mu.Unlock()
	}
}

// Problems returns and forgets what went wrong in the tab so far.
func (tab *Tab) Problems() []string {
	tab.mu.Lock()
	defer tab.mu.Unlock()
	p := tab.problems
	tab.problems = nil
	return p
}

// TabStepTimeout bounds each action of Tab.Do.
const TabStepTimeout = 30 * time.Second

// Do runs actions in the tab, each within TabStepTimeout, and fails t
// on an error, naming the step.
func (tab *Tab) Do(t testing.TB, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	for i, a := range actions {
		ctx, cancel := context.WithTimeout(tab.Ctx, TabStepTimeout)
		err := chromedp.Do(ctx, a)
		cancel()
		if err != nil {
			loc, _ := chromedp.Run(tab.Ctx, chromedp.Location())
			body, _ := chromedp.Run(tab.Ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
			t.Fatalf("browser step %d of %d at %s: %v; the page reads:\n%s", i+1, len(actions), loc, err, LastLines(body, 30))
		}
	}
}
