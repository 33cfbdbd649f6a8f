package mesh

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// TestInteractiveLogin is the default flow: `clustral login` listens on
// 127.0.0.1, the user signs in through Dex's HTML form, the coordinator
// sends the browser back to the CLI's listener with a one-time code, and
// the CLI redeems it with its verifier.
func TestInteractiveLogin(t *testing.T) {
	u, l, ctx := suite.StartLogin(t, alice, harness.Desktop(t))
	if l.UserCode != "" {
		t.Fatalf("a loopback login printed a code %q", l.UserCode)
	}
	resp, err := suite.Env.Dex.Browser().LoginFollow(ctx, l.AuthURL, alice.Email, alice.Password)
	if err != nil {
		t.Fatal(err)
	}
	page := harness.ReadPage(t, resp)
	if resp.StatusCode != 200 || resp.Request.URL.Hostname() != "127.0.0.1" || !strings.HasPrefix(resp.Request.URL.Path, "/clustral/callback/") || !strings.Contains(page, "Signed in as "+alice.Email) {
		t.Fatalf("the browser ended at %s: %d %s", resp.Request.URL, resp.StatusCode, page)
	}
	l.Wait(t, "Logged in to "+suite.CoordURL()+" as "+alice.Email)
	out := u.MustRun("status", "-o", "json")
	if !strings.Contains(out, `"user": "alice@example.com"`) {
		t.Fatalf("status after login = %s", out)
	}
}

// TestHeadlessLogin: `clustral login --no-browser` prints the URL and a
// code; the browser signs in through Dex, lands on the confirmation page
// naming the device, and the session is issued once the code is typed.
func TestHeadlessLogin(t *testing.T) {
	_, l, ctx := suite.StartLogin(t, alice, nil, "--no-browser")
	if len(l.UserCode) != 9 {
		t.Fatalf("code %q, want XXXX-XXXX", l.UserCode)
	}
	b := suite.Env.Dex.Browser()
	resp, err := b.LoginFollow(ctx, l.AuthURL, alice.Email, alice.Password)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	var body bytes.Buffer
	resp.Body = io.NopCloser(io.TeeReader(resp.Body, &body))
	confirmed, err := b.Submit(ctx, resp, "user_code", url.Values{"user_code": {l.UserCode}, "action": {"confirm"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Confirm this login", alice.Email, host, "127.0.0.1"} {
		if !strings.Contains(body.String(), want) {
			t.Fatalf("confirmation page lacks %q:\n%s", want, body.String())
		}
	}
	if page := harness.ReadPage(t, confirmed); confirmed.StatusCode != 200 || !strings.Contains(page, "Signed in as "+alice.Email) {
		t.Fatalf("after confirming: %d %s", confirmed.StatusCode, page)
	}
	l.Wait(t, "as "+alice.Email)
}

// TestLoginLinkSentToAnotherUser is the phishing attack on the login: an
// attacker starts a login and gets someone else to sign in through its
// URL. In both flows the attacker, holding the handle and its own
// verifier, gets no session; the unbound login is audited as AU005W.
func TestLoginLinkSentToAnotherUser(t *testing.T) {
	m := suite.NewMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	poll := func(handle, verifier string) (int, proto.Problem, proto.Session) {
		t.Helper()
		b, _ := json.Marshal(proto.LoginPollRequest{Handle: handle, CodeVerifier: verifier})
		resp, err := http.Post(suite.CoordURL()+proto.APIVersion+"/login/poll", "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var p proto.Problem
		var s proto.Session
		if resp.StatusCode == 200 {
			json.Unmarshal(raw, &s)
		} else {
			json.Unmarshal(raw, &p)
		}
		return resp.StatusCode, p, s
	}
	start := func(redirect string) (proto.LoginStartResponse, string) {
		t.Helper()
		v := oauth2.GenerateVerifier()
		var r proto.LoginStartResponse
		err := harness.CallAPI(ctx, suite.CoordURL(), "POST", proto.APIVersion+"/login/start", "", proto.LoginStartRequest{
			CodeChallenge: oauth2.S256ChallengeFromVerifier(v), CodeChallengeMethod: proto.CodeChallengeS256,
			RedirectURI: redirect, Device: proto.LoginDevice{Hostname: "alice-laptop", OS: "darwin/arm64"},
		}, &r)
		if err != nil {
			t.Fatal(err)
		}
		return r, v
	}

	t.Run("headless", func(t *testing.T) {
		atk, v := start("")
		b := suite.Env.Dex.Browser()
		resp, err := b.LoginFollow(ctx, atk.AuthURL, admin.Email, admin.Password)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Request.URL.Path != "/oidc/callback" {
			t.Fatalf("the victim's browser ended at %s", resp.Request.URL)
		}
		if st, p, s := poll(atk.Handle, v); st != http.StatusAccepted || p.Code != proto.CodeLoginPending || s.Token != "" {
			t.Fatalf("attacker's poll after the victim signed in = %d %+v", st, p)
		}
		// The page names a device the victim does not know; they cancel.
		cancelled, err := b.Submit(ctx, resp, "user_code", url.Values{"action": {"decline"}})
		if err != nil {
			t.Fatal(err)
		}
		if page := harness.ReadPage(t, cancelled); !strings.Contains(page, "No session was issued") {
			t.Fatalf("after cancel: %d %s", cancelled.StatusCode, page)
		}
		if st, p, s := poll(atk.Handle, v); st != http.StatusUnauthorized || p.Code != proto.CodeLoginFailed || s.Token != "" {
			t.Fatalf("attacker's poll after cancel = %d %+v", st, p)
		}
	})

	t.Run("loopback", func(t *testing.T) {
		// The attacker's own listener address; the victim's browser is sent
		// there, on the victim's machine, where the attacker is not.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		redirect := "http://" + ln.Addr().String() + "/cb"
		ln.Close()
		atk, v := start(redirect)
		u, err := suite.Env.Dex.Browser().Login(ctx, atk.AuthURL, admin.Email, admin.Password, redirect)
		if err != nil {
			t.Fatal(err)
		}
		if u.Query().Get("code") == "" {
			t.Fatalf("the victim's browser was sent to %s", u)
		}
		for range 2 {
			if st, p, s := poll(atk.Handle, v); st != http.StatusAccepted || s.Token != "" {
				t.Fatalf("attacker's poll after the victim signed in = %d %+v", st, p)
			}
		}
	})

	// The cancelled login is in the audit trail under its own code.
	var page proto.AuditPage
	deadline := time.Now().Add(10 * time.Second)
	for len(page.Events) == 0 && time.Now().Before(deadline) {
		m.Admin.MustAPI("GET", proto.APIVersion+"/audit/events?code="+string(proto.AuditLoginUnbound), nil, &page)
		if len(page.Events) == 0 {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if len(page.Events) == 0 || page.Events[0].Actor != admin.Email || page.Events[0].Metadata["hostname"] != "alice-laptop" {
		t.Fatalf("AU005W events: %+v", page.Events)
	}
}
