package console

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

// contextPrefix is how `clustral up` names a cluster's kubeconfig
// context (cli/kubeconfig.ContextName; a test holds the two together).
const contextPrefix = "clustral-"

// ---- My access ----

// grantView is one role a user holds on a cluster, in words.
type grantView struct {
	Role    string
	Source  string
	Expires time.Time
	Limits  []proto.Limit
}

type clusterView struct {
	Name   string
	Grants []grantView
}

// source says in words why a role applies.
func source(s string) string {
	switch {
	case s == "user":
		return "assigned to you"
	case strings.HasPrefix(s, "group:"):
		return "through your group " + strings.TrimPrefix(s, "group:")
	case strings.HasPrefix(s, "grant:"):
		return "approved request " + strings.TrimPrefix(s, "grant:")
	case s == "":
		return "assigned"
	}
	return s
}

func (c *Console) accessPage(w http.ResponseWriter, r *http.Request, v *visit) {
	var out []clusterView
	for _, rc := range v.who.Clusters {
		cv := clusterView{Name: rc.Name}
		for _, g := range rc.Roles {
			gv := grantView{Role: g.Role, Source: source(g.Source), Limits: g.Restrictions.Limits()}
			if g.Expires != nil {
				gv.Expires = *g.Expires
			}
			cv.Grants = append(cv.Grants, gv)
		}
		out = append(out, cv)
	}
	d := c.page(r, v, "My access")
	d.Data = struct {
		Clusters       []clusterView
		SessionExpires time.Time
	}{out, v.who.SessionExpires}
	c.render(w, http.StatusOK, "access", d)
}

// ---- Connect ----

func (c *Console) connectPage(w http.ResponseWriter, r *http.Request, v *visit) {
	var ctxs []string
	for _, rc := range v.who.Clusters {
		ctxs = append(ctxs, contextPrefix+rc.Name)
	}
	d := c.page(r, v, "Connect")
	d.Data = struct {
		Login, Up string
		Contexts  []string
	}{"clustral login " + strings.TrimRight(c.cfg.PublicURL, "/"), "clustral up", ctxs}
	c.render(w, http.StatusOK, "connect", d)
}

// ---- Requests ----

// durations are the lengths a request may ask for, and an approval
// shorten to.
var durations = []time.Duration{30 * time.Minute, time.Hour, 2 * time.Hour, 4 * time.Hour, 8 * time.Hour}

type requestsData struct {
	Clusters  []string
	Durations []time.Duration
	Mine      []proto.AccessRequest
	Form      url.Values
}

func (c *Console) requestsPage(w http.ResponseWriter, r *http.Request, v *visit) {
	c.showRequests(w, r, v, http.StatusOK, "", nil)
}

// showRequests renders the requests page with status, an error sentence
// and the form as the user filled it.
func (c *Console) showRequests(w http.ResponseWriter, r *http.Request, v *visit, status int, problem string, form url.Values) {
	var all []proto.AccessRequest
	if err := apiCall(r, v, "GET", proto.APIVersion+"/access-requests", nil, &all); err != nil {
		c.failAPI(w, r, v, err)
		return
	}
	mine := slices.DeleteFunc(all, func(ar proto.AccessRequest) bool { return ar.User != v.who.User.Login })
	d := c.page(r, v, "Request access")
	d.Error = problem
	if form == nil {
		form = url.Values{}
	}
	d.Data = requestsData{Clusters: v.who.Requestable, Durations: durations, Mine: mine, Form: form}
	c.render(w, status, "requests", d)
}

func (c *Console) createRequest(w http.ResponseWriter, r *http.Request, v *visit) {
	f := r.PostForm
	dur, err := time.ParseDuration(f.Get("duration"))
	if err != nil || dur <= 0 {
		c.showRequests(w, r, v, http.StatusBadRequest, "Choose how long you need the access for.", f)
		return
	}
	req := proto.CreateAccessRequest{Cluster: f.Get("cluster"), Role: strings.TrimSpace(f.Get("role")), Duration: proto.Duration(dur), Reason: f.Get("reason")}
	if err := apiCall(r, v, "POST", proto.APIVersion+"/access-requests", req, nil); err != nil {
		c.showRequests(w, r, v, statusOf(err), sentence(err), f)
		return
	}
	http.Redirect(w, r, "/requests?done=requested", http.StatusSeeOther)
}

func (c *Console) cancelRequest(w http.ResponseWriter, r *http.Request, v *visit) {
	path := proto.APIVersion + "/access-requests/" + url.PathEscape(r.PathValue("id")) + "/revoke"
	if err := apiCall(r, v, "POST", path, proto.AccessDecision{Reason: "withdrawn in the web console"}, nil); err != nil {
		c.showRequests(w, r, v, statusOf(err), sentence(err), nil)
		return
	}
	http.Redirect(w, r, "/requests?done=cancelled", http.StatusSeeOther)
}

// ---- Devices and sessions ----

func (c *Console) devicesPage(w http.ResponseWriter, r *http.Request, v *visit) {
	c.showDevices(w, r, v, http.StatusOK, "")
}

func (c *Console) showDevices(w http.ResponseWriter, r *http.Request, v *visit, status int, problem string) {
	var devs []proto.Device
	var sessions []proto.SessionInfo
	err := apiCall(r, v, "GET", proto.APIVersion+"/devices?user="+url.QueryEscape(v.who.User.Login), nil, &devs)
	if err == nil {
		err = apiCall(r, v, "GET", proto.APIVersion+"/sessions", nil, &sessions)
	}
	if err != nil {
		c.failAPI(w, r, v, err)
		return
	}
	d := c.page(r, v, "Devices and sessions")
	d.Error = problem
	d.Data = struct {
		Devices          []proto.Device
		Sessions         []proto.SessionInfo
		RevokeBase, CSRF string
	}{devs, sessions, "/devices/", v.csrf}
	c.render(w, status, "devices", d)
}

func (c *Console) revokeDevice(w http.ResponseWriter, r *http.Request, v *visit) {
	if err := apiCall(r, v, "DELETE", proto.APIVersion+"/devices/"+url.PathEscape(r.PathValue("id")), nil, nil); err != nil {
		c.showDevices(w, r, v, statusOf(err), sentence(err))
		return
	}
	http.Redirect(w, r, "/devices?done=revoked", http.StatusSeeOther)
}

func (c *Console) endSession(w http.ResponseWriter, r *http.Request, v *visit) {
	var sessions []proto.SessionInfo
	if err := apiCall(r, v, "GET", proto.APIVersion+"/sessions", nil, &sessions); err != nil {
		c.failAPI(w, r, v, err)
		return
	}
	id := r.PathValue("id")
	current := slices.ContainsFunc(sessions, func(s proto.SessionInfo) bool { return s.ID == id && s.Current })
	if err := apiCall(r, v, "DELETE", proto.APIVersion+"/sessions/"+url.PathEscape(id), nil, nil); err != nil {
		c.showDevices(w, r, v, statusOf(err), sentence(err))
		return
	}
	if current {
		c.clearSession(w)
		http.Redirect(w, r, "/signin", http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, "/devices?done=ended", http.StatusSeeOther)
}

// ---- Approvals: the access request queue ----

// The queue is every user's page: the API lists the requests the caller
// may decide (administrators: all; others: those of roles whose approver
// groups they are in), besides their own, which the queue leaves out.

type queueData struct {
	Pending   []proto.AccessRequest
	Decided   []proto.AccessRequest
	Durations []time.Duration
	CSRF      string
}

// maxDecided is how many decided requests the queue page shows.
const maxDecided = 20

// queue reads the queue as v sees it.
func (c *Console) queue(r *http.Request, v *visit) (queueData, error) {
	var all []proto.AccessRequest
	if err := apiCall(r, v, "GET", proto.APIVersion+"/access-requests", nil, &all); err != nil {
		return queueData{}, err
	}
	q := queueData{Durations: durations, CSRF: v.csrf}
	for _, ar := range all {
		// One's own requests are on the requests page; nobody decides
		// them here.
		if ar.User == v.who.User.Login {
			continue
		}
		if ar.State == proto.RequestPending {
			q.Pending = append(q.Pending, ar)
		} else if ar.DecidedBy != "" && len(q.Decided) < maxDecided {
			q.Decided = append(q.Decided, ar)
		}
	}
	return q, nil
}

func (c *Console) queuePage(w http.ResponseWriter, r *http.Request, v *visit) {
	c.showQueue(w, r, v, http.StatusOK, "")
}

func (c *Console) showQueue(w http.ResponseWriter, r *http.Request, v *visit, status int, problem string) {
	c.showView(w, r, v, status, problem, "Approvals", "queue", func() (any, error) { return c.queue(r, v) })
}

// showView renders page, titled title, with the data view returns and
// problem as its error; the API's refusal of view is the error page.
func (c *Console) showView(w http.ResponseWriter, r *http.Request, v *visit, status int, problem, title, page string, view func() (any, error)) {
	data, err := view()
	if err != nil {
		c.failAPI(w, r, v, err)
		return
	}
	d := c.page(r, v, title)
	d.Error = problem
	d.Data = data
	c.render(w, status, page, d)
}

func (c *Console) approveRequest(w http.ResponseWriter, r *http.Request, v *visit) {
	var dec proto.AccessDecision
	if s := r.PostForm.Get("duration"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			c.showQueue(w, r, v, http.StatusBadRequest, fmt.Sprintf("%q is not a duration; choose one from the list.", s))
			return
		}
		dec.Duration = proto.Duration(d)
	}
	c.decide(w, r, v, "approve", dec, "approved")
}

func (c *Console) denyRequest(w http.ResponseWriter, r *http.Request, v *visit) {
	c.decide(w, r, v, "deny", proto.AccessDecision{Reason: r.PostForm.Get("reason")}, "denied")
}

func (c *Console) decide(w http.ResponseWriter, r *http.Request, v *visit, action string, dec proto.AccessDecision, done string) {
	path := proto.APIVersion + "/access-requests/" + url.PathEscape(r.PathValue("id")) + "/" + action
	if err := apiCall(r, v, "POST", path, dec, nil); err != nil {
		c.showQueue(w, r, v, statusOf(err), sentence(err))
		return
	}
	http.Redirect(w, r, "/approvals?done="+done, http.StatusSeeOther)
}

// queueEvents streams the queue as Server-Sent Events: "html" with the
// rendered rows whenever they change, and "end" when the session does.
func (c *Console) queueEvents(w http.ResponseWriter, r *http.Request, v *visit) {
	c.rowsEvents(w, r, "queue", "queue-rows", func() (any, error) { return c.queue(r, v) })
}

// rowsEvents streams the template rows of page, rendered from the data
// view returns, as Server-Sent Events whenever the HTML changes.
func (c *Console) rowsEvents(w http.ResponseWriter, r *http.Request, page, rows string, view func() (any, error)) {
	var last []byte
	c.serveEvents(w, r, func() ([]byte, error) {
		data, err := view()
		if err != nil {
			return nil, err
		}
		var buf bytes.Buffer
		if err := c.pages[page].ExecuteTemplate(&buf, rows, data); err != nil {
			return nil, err
		}
		if bytes.Equal(buf.Bytes(), last) {
			return nil, nil
		}
		last = buf.Bytes()
		return last, nil
	})
}

// liveTick is how often a live page looks for changes.
const liveTick = time.Second

// serveEvents serves a Server-Sent Events stream: once a tick it asks
// next for HTML to send; a non-empty answer goes out as an event "html",
// an error as an event "end" with its sentence, which ends the stream, as
// does the request's end. The page's script puts the HTML in place
// (static/console.js); it was rendered by html/template like any page.
func (c *Console) serveEvents(w http.ResponseWriter, r *http.Request, next func() ([]byte, error)) {
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Time{})
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	t := time.NewTicker(liveTick)
	defer t.Stop()
	for n := 0; ; n++ {
		html, err := next()
		var ev bytes.Buffer
		switch {
		case err != nil:
			fmt.Fprintf(&ev, "event: end\ndata: %s\n\n", strings.ReplaceAll(sentence(err), "\n", " "))
		case len(html) > 0:
			ev.WriteString("event: html\n")
			for _, l := range bytes.Split(bytes.TrimRight(html, "\n"), []byte("\n")) {
				ev.WriteString("data: ")
				ev.Write(l)
				ev.WriteString("\n")
			}
			ev.WriteString("\n")
		case n%15 == 0:
			ev.WriteString(": still here\n\n")
		}
		if ev.Len() > 0 {
			rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, werr := w.Write(ev.Bytes()); werr != nil || rc.Flush() != nil || err != nil {
				return
			}
		}
		select {
		case <-r.Context().Done():
			return
		case <-c.cfg.Done:
			return
		case <-t.C:
		}
	}
}

// statusOf is the HTTP status of an API refusal, 502 for anything else.
func statusOf(err error) int {
	var pe *coordclient.Error
	if errors.As(err, &pe) && pe.Status >= 400 {
		return pe.Status
	}
	return http.StatusBadGateway
}
