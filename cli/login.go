package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

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
		Long: `Sign in through the coordinator's OIDC provider. clustral opens your browser
(or prints the URL when there is none, e.g. over SSH), waits for you to sign
in, and stores the session (mode 0600) in your config directory.

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
			api := &apiClient{base: coord, hc: hc}
			var sess proto.Session
			if idTokenFile != "" {
				raw, err := os.ReadFile(idTokenFile)
				if err != nil {
					return fmt.Errorf("read ID token: %w", err)
				}
				if err := api.do(c.Context(), "POST", proto.APIVersion+"/login/token", proto.TokenExchangeRequest{IDToken: strings.TrimSpace(string(raw))}, &sess); err != nil {
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
	c.Flags().BoolVar(&noBrowser, "no-browser", false, "print the login URL instead of opening a browser")
	c.Flags().StringVar(&caFile, "ca-file", "", "PEM bundle to trust for the coordinator (private CAs)")
	c.Flags().BoolVar(&insecure, "insecure", false, "allow a plain http:// coordinator URL on a host other than this machine")
	return c
}

func interactiveLogin(ctx context.Context, g *globals, api *apiClient, noBrowser bool) (*proto.Session, error) {
	var start proto.LoginStartResponse
	if err := api.do(ctx, "POST", proto.APIVersion+"/login/start", nil, &start); err != nil {
		return nil, cliErr(err)
	}
	opened := false
	if !noBrowser {
		opened = openBrowser(start.AuthURL) == nil
	}
	if opened {
		fmt.Fprintf(g.stderr, "Opened your browser to sign in. If it did not open, visit:\n\n  %s\n\n", start.AuthURL)
	} else {
		fmt.Fprintf(g.stderr, "To sign in, open this URL in a browser:\n\n  %s\n\n", start.AuthURL)
	}
	sp := g.spinner("Waiting for you to sign in")
	defer sp.stop()
	interval := time.Duration(start.PollInterval)
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		var sess proto.Session
		err := api.do(ctx, "POST", proto.APIVersion+"/login/poll", proto.LoginPollRequest{Handle: start.Handle}, &sess)
		var pe *problemError
		switch {
		case err == nil:
			return &sess, nil
		case errors.As(err, &pe) && pe.p.Code == proto.CodeLoginPending:
		default:
			return nil, cliErr(err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// openBrowser opens u in the user's browser when there is a desktop.
func openBrowser(u string) error {
	var cmd *exec.Cmd
	switch runtime.GOOS {
	case "darwin":
		cmd = exec.Command("open", u)
	case "windows":
		cmd = exec.Command("rundll32", "url.dll,FileProtocolHandler", u)
	default:
		if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
			return errors.New("no display")
		}
		cmd = exec.Command("xdg-open", u)
	}
	return cmd.Start()
}

func normalizeURL(s string) (string, error) {
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return "", fmt.Errorf("coordinator URL %q is not valid (e.g. https://clustral.example.com)", s)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// coordinatorURL normalizes s (normalizeURL) and refuses plain HTTP to a
// host other than this machine unless insecure is set: the session, node
// and join tokens it carries would cross the network in the clear.
func coordinatorURL(s string, insecure bool) (string, error) {
	u, err := normalizeURL(s)
	if err != nil {
		return "", err
	}
	if insecure || !strings.HasPrefix(u, "http://") {
		return u, nil
	}
	pu, _ := url.Parse(u)
	if host := pu.Hostname(); host == "localhost" {
		return u, nil
	} else if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return u, nil
	}
	return "", fmt.Errorf("coordinator URL %s is plain HTTP to another machine: tokens would cross the network unencrypted; use https://, or pass --insecure on a network you trust", u)
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
				if err := api.do(c.Context(), "DELETE", proto.APIVersion+"/session", nil, nil); err != nil {
					var pe *problemError
					if !errors.As(err, &pe) || pe.status != 401 {
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
