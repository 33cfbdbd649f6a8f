package console

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/clustral/clustral/proto"
)

// The live sessions page: every open watch, followed log, exec, attach
// and port-forward through any agent, updating by itself, with "End now".

// liveData is what the live-rows template gets.
type liveData struct {
	CSRF    string
	Streams []liveRow
	// Stale names agents whose last report is older than StaleAfter.
	Stale      []string
	StaleAfter string
}

// liveRow is one stream with the words the page shows for it.
type liveRow struct {
	proto.LiveStream
	// What names what it touches: namespace/name, or the path.
	What string
}

// liveView lists the live sessions as the signed-in administrator.
func (c *Console) liveView(r *http.Request, v *visit) (liveData, error) {
	var ls proto.LiveSessions
	if err := apiCall(r, v, "GET", proto.LiveSessionsPath, nil, &ls); err != nil {
		return liveData{}, err
	}
	d := liveData{CSRF: v.csrf, Stale: ls.Stale, StaleAfter: human(proto.LiveStaleAfter)}
	for _, s := range ls.Streams {
		d.Streams = append(d.Streams, liveRow{LiveStream: s, What: s.Target()})
	}
	return d, nil
}

func (c *Console) livePage(w http.ResponseWriter, r *http.Request, v *visit) {
	c.showLive(w, r, v, http.StatusOK, "")
}

func (c *Console) showLive(w http.ResponseWriter, r *http.Request, v *visit, status int, problem string) {
	c.showView(w, r, v, status, problem, "Live sessions", "live", func() (any, error) { return c.liveView(r, v) })
}

// liveEvents streams the live sessions' rows as Server-Sent Events, as
// queueEvents does for the approvals queue.
func (c *Console) liveEvents(w http.ResponseWriter, r *http.Request, v *visit) {
	c.rowsEvents(w, r, "live", "live-rows", func() (any, error) { return c.liveView(r, v) })
}

// endLive ends one live session.
func (c *Console) endLive(w http.ResponseWriter, r *http.Request, v *visit) {
	id := r.PathValue("id")
	if err := apiCall(r, v, "POST", proto.LiveSessionsPath+"/"+url.PathEscape(id)+"/end", nil, nil); err != nil {
		c.showLive(w, r, v, statusOf(err), sentence(err))
		return
	}
	http.Redirect(w, r, "/admin/live?done=live-ended", http.StatusSeeOther)
}

// commandLine is an exec's command as one line.
func commandLine(cmd []string) string { return strings.Join(cmd, " ") }
