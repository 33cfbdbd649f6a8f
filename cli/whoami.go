package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustral/clustral/pkg/coordclient"
)

// coordinatorInfo is the coordinator's GET /api/v1/info answer.
type coordinatorInfo struct {
	Version    string    `json:"version"`
	MeshDomain string    `json:"mesh_domain"`
	Issuer     string    `json:"issuer,omitempty"`
	Time       time.Time `json:"time"`
}

// coordinator returns the profile's coordinator URL and an HTTP client for
// it, from the stored session (valid or not) or the profile's settings.
// The client carries no credential.
func (g *globals) coordinator() (string, *http.Client, error) {
	dir, err := g.dir()
	if err != nil {
		return "", nil, err
	}
	base, ca := "", ""
	if s, _ := loadSession(dir); s != nil {
		base, ca = s.Coordinator, s.CAFile
	} else if pc := loadProfileConfig(dir); pc.Coordinator != "" {
		base, ca = pc.Coordinator, pc.CAFile
	}
	if base == "" {
		return "", nil, withHint(exitAuth, errors.New("no coordinator configured for this profile"), "run: clustral login <coordinator-url>")
	}
	var dbg *slog.Logger
	if g.debug {
		dbg = g.logger()
	}
	hc, err := newHTTPClient(ca, dbg)
	return base, hc, err
}

func fetchInfo(ctx context.Context, base string, hc *http.Client) (*coordinatorInfo, error) {
	var info coordinatorInfo
	if err := coordclient.New(base, "", hc).Info(ctx, &info); err != nil {
		return nil, cliErr(err)
	}
	return &info, nil
}

// whoamiView is the output of clustral whoami. Its JSON names are stable.
type whoamiView struct {
	User             string    `json:"user"`
	Email            string    `json:"email,omitempty"`
	Groups           []string  `json:"groups,omitempty"`
	Admin            bool      `json:"admin"`
	Coordinator      string    `json:"coordinator"`
	Profile          string    `json:"profile"`
	SessionExpires   time.Time `json:"session_expires"`
	SessionRemaining int64     `json:"session_remaining_seconds"`
}

func newWhoamiCmd(g *globals) *cobra.Command {
	return viewCmd(g, &cobra.Command{
		Use:   "whoami",
		Short: "Show who you are logged in as, for how long, and in which profile",
		Example: `  clustral whoami
  clustral whoami -o json`,
		Args: cobra.NoArgs,
	}, func(c *cobra.Command, _ string) (whoamiView, error) {
		profile, err := g.profileName()
		if err != nil {
			return whoamiView{}, err
		}
		sess, api, err := g.session()
		if err != nil {
			return whoamiView{}, err
		}
		who, err := api.Whoami(c.Context())
		if err != nil {
			return whoamiView{}, cliErr(err)
		}
		return whoamiView{
			User: who.User.Login, Email: who.User.Email, Groups: who.User.Groups, Admin: who.User.Admin,
			Coordinator: sess.Coordinator, Profile: profile, SessionExpires: who.SessionExpires,
			SessionRemaining: int64(who.SessionExpires.Sub(now()).Seconds()),
		}, nil
	}, func(tw *tabwriter.Writer, v whoamiView) {
		admin := ""
		if v.Admin {
			admin = ", admin"
		}
		fmt.Fprintf(tw, "%s on %s (session %s, profile %s%s)\n", v.User, v.Coordinator, remaining(v.SessionExpires), v.Profile, admin)
	})
}
