package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

// The role form: create a role, or edit one, with the coordinator's
// validation errors shown beside the field that caused them.

// roleField is one field of the role form: its form name (the API's
// JSON name without "restrictions."), its label, and whether it is a
// list (entries separated by commas or new lines).
type roleField struct {
	Name, Label, Hint string
	List              bool
}

var roleFields = []roleField{
	{Name: "name", Label: "Name", Hint: "lowercase letters, digits and dashes"},
	{Name: "description", Label: "Description"},
	{Name: "groups", Label: "Kubernetes groups", Hint: "impersonated for holders of the role", List: true},
	{Name: "kube_user", Label: "Kubernetes user", Hint: "optional: impersonate this user instead of the login"},
	{Name: "approver_groups", Label: "Approver groups", Hint: "OIDC groups whose members may approve requests for it", List: true},
	{Name: "namespaces", Label: "Namespaces", Hint: "empty: every namespace", List: true},
	{Name: "api_groups", Label: "API groups", List: true},
	{Name: "resources", Label: "Resources", Hint: "e.g. pods, pods/log, deployments; exec and the like must be named", List: true},
	{Name: "verbs", Label: "Verbs", Hint: "e.g. get, list, watch", List: true},
	{Name: "resource_names", Label: "Names", List: true},
	{Name: "non_resource_urls", Label: "Non-resource URLs", Hint: "e.g. /metrics, /logs/*", List: true},
}

type roleFormData struct {
	// Editing is the role's name when editing, empty when creating.
	Editing string
	Fields  []roleField
	Values  url.Values
	// Errs holds the coordinator's refusal by form field name.
	Errs map[string]string
	// Windows are the rows of the time windows' part of the form: the
	// role's windows, then an empty one to add a window.
	Windows []windowRow
}

// windowRow is one time window of the role form. Its inputs are named
// window_<field>_<N>; the form's "windows" says how many rows it has.
type windowRow struct {
	N                    int
	Days                 []dayBox
	Start, End, TimeZone string
	// New marks the empty row that adds a window; Remove, a row ticked
	// for removal.
	New, Remove bool
	// Err is the coordinator's refusal of this window.
	Err string
}

// Number is the row's number as the form shows it, from 1.
func (w windowRow) Number() int { return w.N + 1 }

// dayBox is one day's checkbox in a windowRow.
type dayBox struct {
	Day     string
	Checked bool
}

// maxWindowRows bounds the rows a posted form may claim.
const maxWindowRows = 100

// windowDays lists the days Monday first, as people read a week.
var windowDays = append(slices.Clone(proto.Days[1:]), proto.Days[0])

// newWindowRow is row n with days ticked. A day the form does not offer
// (sent by hand, or stored some other way) gets a ticked box of its own,
// so that the form shown again sends it again rather than dropping it,
// which would turn the window into one for every day.
func newWindowRow(n int, days []string) windowRow {
	w := windowRow{N: n}
	for _, d := range windowDays {
		w.Days = append(w.Days, dayBox{Day: d, Checked: slices.Contains(days, d)})
	}
	for _, d := range days {
		if !slices.Contains(windowDays, d) && !slices.ContainsFunc(w.Days, func(b dayBox) bool { return b.Day == d }) {
			w.Days = append(w.Days, dayBox{Day: d, Checked: true})
		}
	}
	return w
}

// windowRows are the rows of a stored role's windows, and an empty one.
func windowRows(tws []proto.TimeWindow) []windowRow {
	var rows []windowRow
	for i, tw := range tws {
		w := newWindowRow(i, tw.Days)
		w.Start, w.End, w.TimeZone = tw.Start, tw.End, tw.TimeZone
		rows = append(rows, w)
	}
	w := newWindowRow(len(rows), nil)
	w.New = true
	return append(rows, w)
}

// formWindows reads the window rows of a posted form, as typed, and the
// windows they describe: those not ticked for removal, and not left
// empty. sent[i] is the row of the i-th window.
func formWindows(f url.Values) (rows []windowRow, windows []proto.TimeWindow, sent []int) {
	n, _ := strconv.Atoi(f.Get("windows"))
	n = min(max(n, 0), maxWindowRows)
	for i := range n {
		get := func(field string) string { return strings.TrimSpace(f.Get(fmt.Sprintf("window_%s_%d", field, i))) }
		days := f[fmt.Sprintf("window_days_%d", i)]
		w := newWindowRow(i, days)
		w.Start, w.End, w.TimeZone, w.Remove = get("start"), get("end"), get("tz"), get("remove") != ""
		empty := len(days) == 0 && w.Start == "" && w.End == "" && w.TimeZone == ""
		if empty {
			continue
		}
		rows = append(rows, w)
		if w.Remove {
			continue
		}
		// Days in the week's order, Monday first; one the form does not offer is
		// sent as it came, for the coordinator to name.
		var tw proto.TimeWindow
		for _, d := range windowDays {
			if slices.Contains(days, d) {
				tw.Days = append(tw.Days, d)
			}
		}
		for _, d := range days {
			if !slices.Contains(proto.Days, d) && !slices.Contains(tw.Days, d) {
				tw.Days = append(tw.Days, d)
			}
		}
		tw.Start, tw.End, tw.TimeZone = w.Start, w.End, w.TimeZone
		windows = append(windows, tw)
		sent = append(sent, len(rows)-1)
	}
	for i := range rows {
		rows[i].N = i
	}
	w := newWindowRow(len(rows), nil)
	w.New = true
	return append(rows, w), windows, sent
}

// placeWindowErrs puts each problem of a refusal of the windows (one
// per window, "time window 2: start: ...") beside the row of the window
// it names, and reports whether it placed them all.
func placeWindowErrs(rows []windowRow, sent []int, title string) bool {
	ms := windowErrRE.FindAllStringSubmatchIndex(title, -1)
	if len(ms) == 0 {
		return false
	}
	for k, m := range ms {
		i, _ := strconv.Atoi(title[m[2]:m[3]])
		if i < 1 || i > len(sent) {
			return false
		}
		end := len(title)
		if k+1 < len(ms) {
			end = ms[k+1][0]
		}
		rows[sent[i-1]].Err = capitalize(strings.TrimRight(strings.TrimSpace(title[m[0]:end]), ".")) + "."
	}
	return true
}

// windowErrRE finds the window a refusal of restrictions.time_windows
// names (proto.Restrictions.Validate: "time window 2: ...").
var windowErrRE = regexp.MustCompile(`time window (\d+):`)

// list splits a list field: commas or new lines between entries.
func list(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' }) {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// roleValues is ro as the form shows it.
func roleValues(ro proto.Role) url.Values {
	v := url.Values{"name": {ro.Name}, "description": {ro.Description}, "kube_user": {ro.KubeUser},
		"groups": {strings.Join(ro.Groups, ", ")}, "approver_groups": {strings.Join(ro.ApproverGroups, ", ")}}
	if r := ro.Restrictions; r != nil {
		for k, l := range map[string][]string{"namespaces": r.Namespaces, "api_groups": r.APIGroups, "resources": r.Resources,
			"verbs": r.Verbs, "resource_names": r.ResourceNames, "non_resource_urls": r.NonResourceURLs} {
			v.Set(k, strings.Join(l, ", "))
		}
	}
	return v
}

// formRole is the role the form f describes, with the time windows
// read from its rows (formWindows).
func formRole(f url.Values, windows []proto.TimeWindow) proto.Role {
	ro := proto.Role{Name: strings.TrimSpace(f.Get("name")), Description: f.Get("description"), KubeUser: strings.TrimSpace(f.Get("kube_user")),
		Groups: list(f.Get("groups")), ApproverGroups: list(f.Get("approver_groups"))}
	r := proto.Restrictions{Namespaces: list(f.Get("namespaces")), APIGroups: list(f.Get("api_groups")), Resources: list(f.Get("resources")),
		Verbs: list(f.Get("verbs")), ResourceNames: list(f.Get("resource_names")), NonResourceURLs: list(f.Get("non_resource_urls")), TimeWindows: windows}
	if len(r.Namespaces)+len(r.APIGroups)+len(r.Resources)+len(r.Verbs)+len(r.ResourceNames)+len(r.NonResourceURLs)+len(r.TimeWindows) > 0 {
		ro.Restrictions = &r
	}
	return ro
}

func (c *Console) showRoleForm(w http.ResponseWriter, r *http.Request, v *visit, status int, d roleFormData, problem string) {
	d.Fields = roleFields
	title := "New role"
	if d.Editing != "" {
		title = "Edit role " + d.Editing
	}
	p := c.page(r, v, title)
	p.Error = problem
	p.Data = d
	c.render(w, status, "role", p)
}

func (c *Console) newRolePage(w http.ResponseWriter, r *http.Request, v *visit) {
	c.showRoleForm(w, r, v, http.StatusOK, roleFormData{Values: url.Values{}, Windows: windowRows(nil)}, "")
}

// editedRole reads the role being edited; it answers the problem itself
// and returns false when it cannot.
func (c *Console) editedRole(w http.ResponseWriter, r *http.Request, v *visit) (proto.Role, bool) {
	var ro proto.Role
	if err := apiCall(r, v, "GET", proto.APIVersion+"/roles/"+url.PathEscape(r.PathValue("role")), nil, &ro); err != nil {
		c.failAPI(w, r, v, err)
		return ro, false
	}
	return ro, true
}

func (c *Console) editRolePage(w http.ResponseWriter, r *http.Request, v *visit) {
	ro, ok := c.editedRole(w, r, v)
	if !ok {
		return
	}
	var windows []proto.TimeWindow
	if ro.Restrictions != nil {
		windows = ro.Restrictions.TimeWindows
	}
	c.showRoleForm(w, r, v, http.StatusOK, roleFormData{Editing: ro.Name, Values: roleValues(ro), Windows: windowRows(windows)}, "")
}

func (c *Console) createRole(w http.ResponseWriter, r *http.Request, v *visit) {
	c.saveRole(w, r, v, "POST", proto.APIVersion+"/roles", roleFormData{Values: r.PostForm})
}

func (c *Console) updateRole(w http.ResponseWriter, r *http.Request, v *visit) {
	ro, ok := c.editedRole(w, r, v)
	if !ok {
		return
	}
	c.saveRole(w, r, v, "PUT", proto.APIVersion+"/roles/"+url.PathEscape(ro.Name), roleFormData{Editing: ro.Name, Values: r.PostForm})
}

// saveRole sends the form's role; a refusal shows the form again as typed
// with the coordinator's sentence beside the field it names, and a
// refused time window beside its row.
func (c *Console) saveRole(w http.ResponseWriter, r *http.Request, v *visit, method, path string, d roleFormData) {
	var windows []proto.TimeWindow
	var sent []int
	d.Windows, windows, sent = formWindows(d.Values)
	err := apiCall(r, v, method, path, formRole(d.Values, windows), nil)
	if err == nil {
		http.Redirect(w, r, "/admin/roles?done=role-saved", http.StatusSeeOther)
		return
	}
	var pe *coordclient.Error
	if errors.As(err, &pe) && pe.Field != "" {
		field := strings.TrimPrefix(pe.Field, "restrictions.")
		if field == "time_windows" && placeWindowErrs(d.Windows, sent, pe.Title) {
			c.showRoleForm(w, r, v, statusOf(err), d, "The role was not saved: see the time windows marked below.")
			return
		}
		d.Errs = map[string]string{field: sentence(err)}
		c.showRoleForm(w, r, v, statusOf(err), d, "The role was not saved: see the field marked below.")
		return
	}
	c.showRoleForm(w, r, v, statusOf(err), d, sentence(err))
}
