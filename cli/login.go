package cli

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/oauth2"

	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

func newLoginCmd(g *globals) *cobra.Command {
	var (
		idTokenFile string
		noBrowser   bool
		caFile      string
		insecure    bool
	)
	c := &cobra.Command{
		Use:   "login [coordinator-url]",
		Short: "Sign in to a clustral coordinator through your identity provider",
		Long: `Sign in through the coordinator's OIDC provider, and store the session
(mode 0600) in your config directory.

A login is bound to the clustral process that started it: only that
process can receive its session, so a login URL someone else sends you
signs nobody in on their machine.

With a browser on this machine, clustral opens it and listens on
127.0.0.1; after you sign in, the coordinator sends the browser back to
that listener with a one-time code that only this process can redeem.

With --no-browser (or no desktop, e.g. over SSH), open the printed URL in
any browser. After you sign in, the page names the device that started
the login (host name, system, address, time) and asks for the code the
terminal shows; the session is issued only once you type it there. Do
not enter a code someone else gave you.

For automation, --id-token-file exchanges an ID token from the trusted
issuer directly.`,
		Example: `  clustral login https://clustral.example.com
  clustral login https://clustral.example.com --no-browser
  clustral login https://clustral.example.com --id-token-file /var/run/secrets/oidc-token`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			dir, err := g.dir()
			if err != nil {
				return err
			}
			coord := ""
			if len(args) == 1 {
				coord = args[0]
			} else if s, _ := loadSession(dir); s != nil {
				coord, caFile = s.Coordinator, firstNonEmpty(caFile, s.CAFile)
			} else if pc := loadProfileConfig(dir); pc.Coordinator != "" {
				coord, caFile = pc.Coordinator, firstNonEmpty(caFile, pc.CAFile)
			}
			if coord == "" {
				return usageError{errors.New("which coordinator? pass its URL, e.g. clustral login https://clustral.example.com")}
			}
			coord, err = coordinatorURL(coord, insecure)
			if err != nil {
				return usageError{err}
			}
			var dbg = g.logger()
			if !g.debug {
				dbg = nil
			}
			hc, err := newHTTPClient(caFile, dbg)
			if err != nil {
				return err
			}
			api := coordclient.New(coord, "", hc)
			var sess proto.Session
			if idTokenFile != "" {
				raw, err := os.ReadFile(idTokenFile)
				if err != nil {
					return fmt.Errorf("read ID token: %w", err)
				}
				if sess, err = api.LoginToken(c.Context(), proto.TokenExchangeRequest{IDToken: strings.TrimSpace(string(raw))}); err != nil {
					return cliErr(err)
				}
			} else {
				s, err := interactiveLogin(c.Context(), g, api, noBrowser)
				if err != nil {
					return err
				}
				sess = *s
			}
			if err := saveSession(dir, &storedSession{Coordinator: coord, CAFile: caFile, Session: sess}); err != nil {
				return fmt.Errorf("save session: %w", err)
			}
			fmt.Fprintf(g.stdout, "Logged in to %s as %s (session valid until %s).\n", coord, sess.User.Login, sess.ExpiresAt.Local().Format("Jan 2 15:04"))
			return nil
		},
	}
	c.Flags().StringVar(&idTokenFile, "id-token-file", "", "exchange the ID token in this file instead of a browser login")
	c.Flags().BoolVar(&noBrowser, "no-browser", false, "sign in from a browser on any machine, confirming the code this terminal shows")
	c.Flags().StringVar(&caFile, "ca-file", "", "PEM bundle to trust for the coordinator (private CAs)")
	c.Flags().BoolVar(&insecure, "insecure", false, "allow a plain http:// coordinator URL on a host other than this machine")
	return c
}

// interactiveLogin signs in through the browser. The login is bound to
// this process by a code verifier that never leaves it (only its S256
// challenge does). With a browser on this machine, the coordinator sends
// the browser back to a listener on 127.0.0.1 with a one-time code that
// only this verifier redeems. Without one (--no-browser, SSH), the URL may
// be opened anywhere, and the person confirms in the browser the code this
// terminal shows before the poll yields the session.
func interactiveLogin(ctx context.Context, g *globals, api *coordclient.Client, noBrowser bool) (*proto.Session, error) {
	verifier := oauth2.GenerateVerifier()
	req := proto.LoginStartRequest{
		CodeChallenge:       oauth2.S256ChallengeFromVerifier(verifier),
		CodeChallengeMethod: proto.CodeChallengeS256,
		Device:              proto.LoginDevice{OS: runtime.GOOS + "/" + runtime.GOARCH},
	}
	req.Device.Hostname, _ = os.Hostname()
	var lb *loopback
	if !noBrowser && hasBrowser() {
		var err error
		if lb, err = newLoopback(api, verifier); err != nil {
			fmt.Fprintf(g.stderr, "Cannot listen on 127.0.0.1 for the browser (%v); signing in without it.\n", err)
		} else {
			defer lb.close()
			req.RedirectURI = lb.uri
		}
	}
	start, err := api.LoginStart(ctx, req)
	if err != nil {
		return nil, cliErr(err)
	}
	// The coordinator ends the login at ExpiresAt (a poll then says so);
	// the local deadline only backs that up, and allows for clock skew.
	ctx, cancel := context.WithTimeout(ctx, max(start.ExpiresAt.Sub(now()), time.Minute)+30*time.Second)
	defer cancel()
	var sp *spinner
	if lb != nil {
		if openBrowser(start.AuthURL) == nil {
			fmt.Fprintf(g.stderr, "Opened your browser to sign in. If it did not open, visit this URL in a browser on this machine:\n\n  %s\n\n", start.AuthURL)
		} else {
			fmt.Fprintf(g.stderr, "To sign in, open this URL in a browser on this machine:\n\n  %s\n\n", start.AuthURL)
		}
		sp = g.spinner("Waiting for you to sign in (browser on another machine? press Ctrl-C and use --no-browser)")
	} else {
		fmt.Fprintf(g.stderr, "To sign in, open this URL in a browser:\n\n  %s\n\nThe page then names this device (%s) and asks for this code:\n\n  %s\n\n",
			start.AuthURL, req.Device.Hostname, start.UserCode)
		sp = g.spinner("Waiting for you to sign in and confirm the code")
	}
	defer sp.stop()
	interval := time.Duration(start.PollInterval)
	if interval <= 0 {
		interval = time.Second
	}
	if lb != nil {
		// The session comes through the loopback listener; the poll only
		// reports a failure at the coordinator.
		interval = max(interval, 2*time.Second)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var done <-chan loopbackResult
	gone := 0
	if lb != nil {
		done = lb.done
	}
	for {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, withHint(exitAuth, errors.New("the login expired before you finished signing in"), "run clustral login again")
			}
			return nil, ctx.Err()
		case res := <-done:
			return res.sess, res.err
		case <-t.C:
		}
		sess, err := api.LoginPoll(ctx, proto.LoginPollRequest{Handle: start.Handle, CodeVerifier: verifier})
		var pe *coordclient.Error
		switch {
		case err == nil && sess.Token != "":
			return &sess, nil
		case errors.As(err, &pe) && pe.Code == proto.CodeLoginPending:
		case errors.As(err, &pe) && pe.Code == proto.CodeLoginConsumed && lb != nil && gone < 3:
			// The loopback listener is redeeming the code right now.
			gone++
		case ctx.Err() != nil:
		default:
			if err == nil {
				err = errors.New("the coordinator answered the poll without a session")
			}
			return nil, cliErr(err)
		}
	}
}

// loopback is the listener on 127.0.0.1 that the coordinator sends the
// browser back to (RFC 8252 §7.3). Its path holds a random part, so no
// other page in the browser can aim at it.
type loopback struct {
	uri  string
	srv  *http.Server
	done chan loopbackResult // receives the outcome once
	once sync.Once
}

type loopbackResult struct {
	sess *proto.Session
	err  error
}

func newLoopback(api *coordclient.Client, verifier string) (*loopback, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	path := "/clustral/callback/" + rand.Text()
	lb := &loopback{uri: "http://" + ln.Addr().String() + path, done: make(chan loopbackResult, 1)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) {
		var res loopbackResult
		q := r.URL.Query()
		switch {
		case q.Get("error") != "":
			res.err = withHint(exitAuth, fmt.Errorf("login failed: %s", firstNonEmpty(q.Get("error_description"), q.Get("error"))), "run clustral login again")
		case q.Get("code") == "":
			http.Error(w, "no code in this request", http.StatusBadRequest)
			return
		default:
			if sess, err := api.LoginExchange(r.Context(), proto.LoginExchangeRequest{Code: q.Get("code"), CodeVerifier: verifier}); err != nil {
				res.err = cliErr(err)
			} else {
				res.sess = &sess
			}
		}
		first := false
		lb.once.Do(func() { first = true; lb.done <- res })
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		switch {
		case !first:
			w.WriteHeader(http.StatusConflict)
			loopbackPage().Execute(w, map[string]string{"Err": "this login already finished; look at your terminal"})
		case res.err != nil:
			w.WriteHeader(http.StatusUnauthorized)
			loopbackPage().Execute(w, map[string]string{"Err": res.err.Error()})
		default:
			loopbackPage().Execute(w, map[string]string{"Login": res.sess.User.Login})
		}
	})
	lb.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second}
	go lb.srv.Serve(ln)
	return lb, nil
}

// close stops the listener after the browser got its page.
func (lb *loopback) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lb.srv.Shutdown(ctx)
}

var loopbackPage = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("lb").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>clustral login</title></head>
<body style="font-family:sans-serif;margin:4em">
{{if .Err}}<h1>Login failed</h1><p>{{.Err}}</p>{{else}}<h1>Signed in as {{.Login}}</h1>
<p>You can close this window and return to your terminal.</p>{{end}}
</body></html>`))
})

// hasBrowser reports whether a browser can be opened on this machine.
// Tests replace it.
var hasBrowser = func() bool {
	switch runtime.GOOS {
	case "darwin", "windows":
		return true
	}
	return os.Getenv("DISPLAY") != "" || os.Getenv("WAYLAND_DISPLAY") != ""
}

// openBrowser opens u in the user's browser when there is a desktop.
// Tests replace it.
var openBrowser = func(u string) error {
	var cmd *exec.Cmd
	switch runtime.GOOS {
	case "darwin":
		cmd = exec.Command("open", u)
	case "windows":
		cmd = exec.Command("rundll32", "url.dll,FileProtocolHandler", u)
	default:
		if !hasBrowser() {
			return errors.New("no display")
		}
		cmd = exec.Command("xdg-open", u)
	}
	return cmd.Start()
}

// normalizeURL normalizes a coordinator URL, or several replicas' URLs
// separated by commas, each on its own: https:// when no scheme is
// given, no trailing slash.
func normalizeURL(s string) (string, error) {
	list := coordclient.SplitURLs(s)
	if len(list) == 0 {
		list = []string{s}
	}
	for i, e := range list {
		if !strings.Contains(e, "://") {
			e = "https://" + e
		}
		u, err := url.Parse(e)
		if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
			return "", fmt.Errorf("coordinator URL %q is not valid (e.g. https://clustral.example.com, or several replicas comma-separated)", e)
		}
		list[i] = strings.TrimRight(u.String(), "/")
	}
	return strings.Join(list, ","), nil
}

// coordinatorURL normalizes s (normalizeURL) and refuses plain HTTP to a
// host other than this machine unless insecure is set: the session, node
// and join tokens it carries would cross the network in the clear.
func coordinatorURL(s string, insecure bool) (string, error) {
	norm, err := normalizeURL(s)
	if err != nil {
		return "", err
	}
	for _, u := range coordclient.SplitURLs(norm) {
		if insecure || !strings.HasPrefix(u, "http://") {
			continue
		}
		pu, _ := url.Parse(u)
		if host := pu.Hostname(); host == "localhost" {
			continue
		} else if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
			continue
		}
		return "", fmt.Errorf("coordinator URL %s is plain HTTP to another machine: tokens would cross the network unencrypted; use https://, or pass --insecure on a network you trust", u)
	}
	return norm, nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func newLogoutCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "logout",
		Short:   "Revoke your session and this device, and forget the login",
		Example: "  clustral logout",
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			dir, err := g.dir()
			if err != nil {
				return err
			}
			_ = stopUp(g, dir) // best effort: take the tunnel down first
			s, api, err := g.session()
			if s == nil {
				return err
			}
			if err == nil {
				if err := api.Logout(c.Context()); err != nil {
					var pe *coordclient.Error
					if !errors.As(err, &pe) || pe.Status != 401 {
						return cliErr(err)
					}
				}
			}
			if err := os.Remove(dir + "/" + sessionFile); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			if err := os.Remove(accountPath(dir, s.Session.User.Login)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			fmt.Fprintf(g.stdout, "Logged out of %s.\n", s.Coordinator)
			return nil
		},
	}
}
