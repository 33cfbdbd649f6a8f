package console

import (
	"bytes"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/clustral/clustral/proto"
)

// The administrators' pages besides the request queue: clusters, users,
// roles and the audit log. Each reads and changes through the API as the
// signed-in administrator.

// The agent's inputs in its namespace, as `clustral clusters add
// --manifest` writes them (cli/manifest.go).
const (
	agentNamespace = "clustral"
	joinTokenName  = "clustral-join-token"
	joinTokenKey   = "token"
	agentConfName  = "clustral-agent"
	coordURLKey    = "coordinator-url"
)

// ---- clusters ----

type clustersData struct {
	Clusters []proto.Cluster
	Form     url.Values
	// Token is a join token just issued, shown this once, with the lines
	// that install an agent with it.
	Token       *proto.JoinToken
	InstallCmds []string
}

func (c *Console) clustersPage(w http.ResponseWriter, r *http.Request, v *visit) {
	c.showClusters(w, r, v, http.StatusOK, "", nil, nil)
}

func (c *Console) showClusters(w http.ResponseWriter, r *http.Request, v *visit, status int, problem string, form url.Values, tok *proto.JoinToken) {
	var cls []proto.Cluster
	if err := apiCall(r, v, "GET", proto.APIVersion+"/clusters", nil, &cls); err != nil {
		c.failAPI(w, r, v, err)
		return
	}
	sort.Slice(cls, func(i, j int) bool { return cls[i].Name < cls[j].Name })
	d := c.page(r, v, "Clusters")
	d.Error = problem
	if form == nil {
		form = url.Values{}
	}
	cd := clustersData{Clusters: cls, Form: form, Token: tok}
	if tok != nil {
		cd.InstallCmds = []string{
			"kubectl apply -k deploy/agent",
			fmt.Sprintf("kubectl -n %s create secret generic %s --from-literal=%s=%s", agentNamespace, joinTokenName, joinTokenKey, tok.JoinToken),
			fmt.Sprintf("kubectl -n %s create configmap %s --from-literal=%s=%s", agentNamespace, agentConfName, coordURLKey, strings.TrimRight(c.cfg.PublicURL, "/")),
		}
	}
	d.Data = cd
	c.render(w, status, "clusters", d)
}

// agentPath says how devices reach agent a: directly, through the
// coordinator's relay, or both, from its peers' paths as it last
// reported them, and whether it published an endpoint at all.
func agentPath(a proto.Agent) string {
	var pc proto.PathCounts
	if a.Status != nil {
		pc = a.Status.Paths
	}
	switch {
	case pc.Direct > 0 && pc.Relayed > 0:
		return fmt.Sprintf("direct to %d, relayed to %d devices", pc.Direct, pc.Relayed)
	case pc.Direct > 0:
		return "direct"
	case pc.Relayed > 0:
		return "relayed"
	case a.Relayed:
		return "relayed (no endpoint published)"
	}
	return "direct (no device connected)"
}

// parseLabels reads "k=v, k2=v2" (commas or new lines between).
func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' }) {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		k, v, ok := strings.Cut(f, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("label %q is not key=value; write labels as env=prod, team=payments", f)
		}
		out[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return out, nil
}

func (c *Console) createCluster(w http.ResponseWriter, r *http.Request, v *visit) {
	f := r.PostForm
	labels, err := parseLabels(f.Get("labels"))
	if err != nil {
		c.showClusters(w, r, v, http.StatusBadRequest, capitalize(err.Error())+".", f, nil)
		return
	}
	var resp proto.CreateClusterResponse
	if err := apiCall(r, v, "POST", proto.APIVersion+"/clusters", proto.CreateClusterRequest{Name: strings.TrimSpace(f.Get("name")), Labels: labels}, &resp); err != nil {
		c.showClusters(w, r, v, statusOf(err), sentence(err), f, nil)
		return
	}
	// No redirect: the token is shown on this answer only, never stored
	// for a later page.
	c.showClusters(w, r, v, http.StatusOK, "", nil, &proto.JoinToken{Cluster: resp.Cluster.Name, JoinToken: resp.JoinToken})
}

func (c *Console) clusterToken(w http.ResponseWriter, r *http.Request, v *visit) {
	action := r.PathValue("action")
	if action != "rotate-token" && action != "revoke-token" {
		c.fail(w, r, v, http.StatusNotFound, "There is no such action on a cluster; use Rotate token or Revoke token.")
		return
	}
	var tok proto.JoinToken
	if err := apiCall(r, v, "POST", proto.APIVersion+"/clusters/"+url.PathEscape(r.PathValue("cluster"))+"/"+action, nil, &tok); err != nil {
		c.showClusters(w, r, v, statusOf(err), sentence(err), nil, nil)
		return
	}
	if action == "revoke-token" {
		http.Redirect(w, r, "/admin/clusters?done=token-revoked", http.StatusSeeOther)
		return
	}
	c.showClusters(w, r, v, http.StatusOK, "", nil, &tok)
}

// ---- users ----

func (c *Console) usersPage(w http.ResponseWriter, r *http.Request, v *visit) {
	c.showUsers(w, r, v, http.StatusOK, "")
}

func (c *Console) showUsers(w http.ResponseWriter, r *http.Request, v *visit, status int, problem string) {
	var users []proto.User
	if err := apiCall(r, v, "GET", proto.APIVersion+"/users", nil, &users); err != nil {
		c.failAPI(w, r, v, err)
		return
	}
	sort.Slice(users, func(i, j int) bool { return users[i].Login < users[j].Login })
	d := c.page(r, v, "Users")
	d.Error = problem
	d.Data = users
	c.render(w, status, "users", d)
}

func (c *Console) userState(w http.ResponseWriter, r *http.Request, v *visit) {
	action := r.PathValue("action")
	if action != "disable" && action != "enable" {
		c.fail(w, r, v, http.StatusNotFound, "There is no such action on a user; use Disable or Enable.")
		return
	}
	if err := apiCall(r, v, "POST", proto.APIVersion+"/users/"+url.PathEscape(r.PathValue("user"))+"/"+action, nil, nil); err != nil {
		c.showUsers(w, r, v, statusOf(err), sentence(err))
		return
	}
	http.Redirect(w, r, "/admin/users?done="+action+"d", http.StatusSeeOther)
}

// ---- roles ----

type roleView struct {
	proto.Role
	Limits []proto.Limit
}

func (c *Console) rolesPage(w http.ResponseWriter, r *http.Request, v *visit) {
	var roles []proto.Role
	if err := apiCall(r, v, "GET", proto.APIVersion+"/roles", nil, &roles); err != nil {
		c.failAPI(w, r, v, err)
		return
	}
	sort.Slice(roles, func(i, j int) bool { return roles[i].Name < roles[j].Name })
	var out []roleView
	for _, ro := range roles {
		out = append(out, roleView{Role: ro, Limits: ro.Restrictions.Limits()})
	}
	d := c.page(r, v, "Roles")
	d.Data = out
	c.render(w, http.StatusOK, "roles", d)
}

// ---- audit ----

// auditFilters are the audit page's filters, as the API names them.
var auditFilters = []string{proto.AuditParamUser, proto.AuditParamCluster, proto.AuditParamCode, proto.AuditParamCategory,
	proto.AuditParamFrom, proto.AuditParamTo, proto.AuditParamSearch}

// auditPageSize is how many events one page shows, unless ?limit= says
// otherwise (up to maxAuditPageSize).
const (
	auditPageSize    = 50
	maxAuditPageSize = 500
)

type auditData struct {
	Filter     url.Values
	Categories []proto.AuditCategory
	Events     []proto.AuditEvent
	// Next is the URL of the following page, empty on the last; Newest,
	// on a following page, the URL of the first.
	Next, Newest string
	// Tail is the URL of the live tail with the page's filter.
	Tail string
	// Verified is the chain's check, when asked for.
	Verified *proto.AuditVerification
	// Checkpoint is the newest signed checkpoint, nil while there is
	// none; CheckpointErr says why it could not be read.
	Checkpoint    *proto.AuditCheckpoint
	CheckpointErr string
}

// auditTime reads the audit page's from or to filter (label names it): a
// duration ago (30m, 2h, 1d) or an RFC 3339 time, as on the sessions
// page, in the RFC 3339 form the API takes.
func auditTime(label, s string, now time.Time) (string, error) {
	t, err := sinceTime(s, now)
	if err != nil {
		return "", fmt.Errorf("%s %q is neither a duration ago (30m, 2h, 1d) nor an RFC 3339 time (2026-01-02T15:04:05Z); correct it and show again.", label, s)
	}
	return t.UTC().Format(time.RFC3339Nano), nil
}

// latestCheckpoint reads the newest signed checkpoint for the audit
// page: nil and no problem while there is none.
func latestCheckpoint(r *http.Request, v *visit) (*proto.AuditCheckpoint, string) {
	var ck proto.AuditCheckpoint
	err := apiCall(r, v, "GET", proto.APIVersion+"/audit/checkpoints/latest", nil, &ck)
	if statusOf(err) == http.StatusNotFound {
		return nil, ""
	}
	if err != nil {
		return nil, sentence(err)
	}
	return &ck, ""
}

// auditFilter is the filter of the query in, as the API names it.
func auditFilter(in url.Values) url.Values {
	q := url.Values{}
	for _, k := range auditFilters {
		if s := strings.TrimSpace(in.Get(k)); s != "" {
			q.Set(k, s)
		}
	}
	return q
}

func (c *Console) auditPage(w http.ResponseWriter, r *http.Request, v *visit) {
	c.showAudit(w, r, v, nil, "")
}

func (c *Console) showAudit(w http.ResponseWriter, r *http.Request, v *visit, verified *proto.AuditVerification, problem string) {
	in := r.URL.Query()
	q := auditFilter(in)
	api := url.Values{}
	for k, vs := range q {
		api[k] = vs
	}
	now := time.Now()
	badTime := ""
	for _, k := range []string{proto.AuditParamFrom, proto.AuditParamTo} {
		if s := q.Get(k); s != "" {
			t, err := auditTime(capitalize(k), s, now)
			if err != nil && badTime == "" {
				badTime = err.Error()
			}
			api.Set(k, t)
		}
	}
	size := auditPageSize
	if n, err := strconv.Atoi(in.Get(proto.AuditParamLimit)); err == nil && n > 0 && n <= maxAuditPageSize {
		size = n
		q.Set(proto.AuditParamLimit, strconv.Itoa(n))
	}
	api.Set(proto.AuditParamLimit, strconv.Itoa(size))
	if cur := in.Get(proto.AuditParamCursor); cur != "" {
		api.Set(proto.AuditParamCursor, cur)
	}
	d := c.page(r, v, "Audit log")
	d.Error = problem
	// The tail and the older pages take the times as read now, so that
	// "2h" means the same on each.
	tail := url.Values{}
	for k, vs := range q {
		if k == proto.AuditParamFrom || k == proto.AuditParamTo {
			vs = api[k]
		}
		if k != proto.AuditParamLimit {
			tail[k] = vs
		}
	}
	ad := auditData{Filter: q, Categories: proto.AuditCategories, Verified: verified, Tail: "/admin/audit/events?" + tail.Encode()}
	ad.Checkpoint, ad.CheckpointErr = latestCheckpoint(r, v)
	var page proto.AuditPage
	status := http.StatusOK
	if badTime != "" {
		// The user's to fix: the form, with the sentence.
		status, d.Error = http.StatusBadRequest, badTime
	} else if err := apiCall(r, v, "GET", proto.APIVersion+"/audit/events?"+api.Encode(), nil, &page); err != nil {
		// A bad filter is the user's to fix: show the form with the
		// coordinator's sentence.
		status, d.Error = statusOf(err), sentence(err)
	} else {
		ad.Events = page.Events
		if page.Next != "" {
			next := url.Values{}
			for k, vs := range q {
				next[k] = vs
			}
			for _, k := range []string{proto.AuditParamFrom, proto.AuditParamTo} {
				if _, ok := q[k]; ok {
					next[k] = api[k]
				}
			}
			next.Set(proto.AuditParamCursor, page.Next)
			ad.Next = "/admin/audit?" + next.Encode()
		}
		if in.Get(proto.AuditParamCursor) != "" {
			// An older page: back to the newest, the filter kept as typed.
			ad.Newest = "/admin/audit?" + q.Encode()
		}
	}
	d.Data = ad
	c.render(w, status, "audit", d)
}

func (c *Console) verifyAudit(w http.ResponseWriter, r *http.Request, v *visit) {
	var res proto.AuditVerification
	if err := apiCall(r, v, "GET", proto.APIVersion+"/audit/verify", nil, &res); err != nil {
		c.showAudit(w, r, v, nil, sentence(err))
		return
	}
	c.showAudit(w, r, v, &res, "")
}

// ---- assignments ----

type assignmentsData struct {
	Assignments []proto.Assignment
	Roles       []string
	Clusters    []string
	Durations   []time.Duration
	Form        url.Values
}

func (c *Console) assignmentsPage(w http.ResponseWriter, r *http.Request, v *visit) {
	c.showAssignments(w, r, v, http.StatusOK, "", nil)
}

func (c *Console) showAssignments(w http.ResponseWriter, r *http.Request, v *visit, status int, problem string, form url.Values) {
	var (
		as    []proto.Assignment
		roles []proto.Role
		cls   []proto.Cluster
	)
	err := apiCall(r, v, "GET", proto.APIVersion+"/assignments", nil, &as)
	if err == nil {
		err = apiCall(r, v, "GET", proto.APIVersion+"/roles", nil, &roles)
	}
	if err == nil {
		err = apiCall(r, v, "GET", proto.APIVersion+"/clusters", nil, &cls)
	}
	if err != nil {
		c.failAPI(w, r, v, err)
		return
	}
	ad := assignmentsData{Assignments: as, Durations: durations, Form: form}
	if ad.Form == nil {
		ad.Form = url.Values{"who": {"user"}}
	}
	for _, ro := range roles {
		ad.Roles = append(ad.Roles, ro.Name)
	}
	for _, cl := range cls {
		ad.Clusters = append(ad.Clusters, cl.Name)
	}
	sort.Strings(ad.Roles)
	sort.Strings(ad.Clusters)
	d := c.page(r, v, "Assignments")
	d.Error = problem
	d.Data = ad
	c.render(w, status, "assignments", d)
}

func (c *Console) createAssignment(w http.ResponseWriter, r *http.Request, v *visit) {
	f := r.PostForm
	a := proto.Assignment{Role: f.Get("role")}
	name := strings.TrimSpace(f.Get("name"))
	switch f.Get("who") {
	case "user":
		a.User = name
	case "group":
		a.Group = name
	default:
		c.showAssignments(w, r, v, http.StatusBadRequest, "Choose whether the role goes to a user or to a group.", f)
		return
	}
	if sel := strings.TrimSpace(f.Get("selector")); sel != "" {
		labels, err := parseLabels(sel)
		if err != nil {
			c.showAssignments(w, r, v, http.StatusBadRequest, capitalize(err.Error())+".", f)
			return
		}
		a.ClusterSelector = labels
	} else {
		a.Cluster = f.Get("cluster")
	}
	if s := f.Get("for"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			c.showAssignments(w, r, v, http.StatusBadRequest, fmt.Sprintf("%q is not a duration; choose one from the list.", s), f)
			return
		}
		exp := time.Now().Add(d)
		a.Expires = &exp
	}
	if err := apiCall(r, v, "POST", proto.APIVersion+"/assignments", a, nil); err != nil {
		c.showAssignments(w, r, v, statusOf(err), sentence(err), f)
		return
	}
	http.Redirect(w, r, "/admin/assignments?done=assigned", http.StatusSeeOther)
}

func (c *Console) deleteAssignment(w http.ResponseWriter, r *http.Request, v *visit) {
	if err := apiCall(r, v, "DELETE", proto.APIVersion+"/assignments/"+url.PathEscape(r.PathValue("id")), nil, nil); err != nil {
		c.showAssignments(w, r, v, statusOf(err), sentence(err), nil)
		return
	}
	http.Redirect(w, r, "/admin/assignments?done=unassigned", http.StatusSeeOther)
}

// auditTail streams the events that come after it opened, matching the
// page's filter, newest first, as Server-Sent Events.
func (c *Console) auditTail(w http.ResponseWriter, r *http.Request, v *visit) {
	q := auditFilter(r.URL.Query())
	first := url.Values{}
	for k, vs := range q {
		first[k] = vs
	}
	first.Set(proto.AuditParamLimit, "1")
	var page proto.AuditPage
	if err := apiCall(r, v, "GET", proto.APIVersion+"/audit/events?"+first.Encode(), nil, &page); err != nil {
		c.failAPI(w, r, v, err)
		return
	}
	cursor := page.Follow
	c.serveEvents(w, r, func() ([]byte, error) {
		pq := url.Values{}
		for k, vs := range q {
			pq[k] = vs
		}
		pq.Set(proto.AuditParamOrder, "asc")
		pq.Set(proto.AuditParamLimit, strconv.Itoa(maxAuditPageSize))
		if cursor != "" {
			pq.Set(proto.AuditParamCursor, cursor)
		}
		var page proto.AuditPage
		if err := apiCall(r, v, "GET", proto.APIVersion+"/audit/events?"+pq.Encode(), nil, &page); err != nil {
			return nil, err
		}
		if page.Next != "" {
			cursor = page.Next
		}
		if len(page.Events) == 0 {
			return nil, nil
		}
		slices.Reverse(page.Events) // newest first, as the page lists them
		var buf bytes.Buffer
		for _, ev := range page.Events {
			if err := c.pages["audit"].ExecuteTemplate(&buf, "event", ev); err != nil {
				return nil, err
			}
		}
		return buf.Bytes(), nil
	})
}

// userData is one user's page: who they are, what is assigned to them
// (directly or through a group), and their devices.
type userData struct {
	User        proto.User
	Assignments []proto.Assignment
	Devices     []proto.Device
	// RevokeBase and CSRF are for the devices table's revoke forms.
	RevokeBase, CSRF string
}

func (c *Console) userPage(w http.ResponseWriter, r *http.Request, v *visit) {
	c.showUser(w, r, v, http.StatusOK, "")
}

func (c *Console) showUser(w http.ResponseWriter, r *http.Request, v *visit, status int, problem string) {
	var (
		ud  userData
		all []proto.Assignment
	)
	name := r.PathValue("user")
	err := apiCall(r, v, "GET", proto.APIVersion+"/users/"+url.PathEscape(name), nil, &ud.User)
	if err == nil {
		err = apiCall(r, v, "GET", proto.APIVersion+"/assignments", nil, &all)
	}
	if err == nil {
		err = apiCall(r, v, "GET", proto.APIVersion+"/devices?user="+url.QueryEscape(ud.User.Login), nil, &ud.Devices)
	}
	if err != nil {
		c.failAPI(w, r, v, err)
		return
	}
	for _, a := range all {
		if a.User == ud.User.Login || a.Group != "" && slices.Contains(ud.User.Groups, a.Group) {
			ud.Assignments = append(ud.Assignments, a)
		}
	}
	ud.RevokeBase, ud.CSRF = "/admin/users/"+url.PathEscape(ud.User.Login)+"/devices/", v.csrf
	d := c.page(r, v, "User "+ud.User.Login)
	d.Error = problem
	d.Data = ud
	c.render(w, status, "user", d)
}

// revokeUserDevice revokes one of a user's devices from their page.
func (c *Console) revokeUserDevice(w http.ResponseWriter, r *http.Request, v *visit) {
	if err := apiCall(r, v, "DELETE", proto.APIVersion+"/devices/"+url.PathEscape(r.PathValue("id")), nil, nil); err != nil {
		c.showUser(w, r, v, statusOf(err), sentence(err))
		return
	}
	http.Redirect(w, r, "/admin/users/"+url.PathEscape(r.PathValue("user"))+"?done=revoked", http.StatusSeeOther)
}
