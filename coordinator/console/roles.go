package console

import (
	"errors"
	"net/http"
	"net/url"
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
	// Windows are the role's time windows, kept as they are.
	Windows []proto.TimeWindow
}

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

// formRole is the role the form f describes, with windows kept.
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
	c.showRoleForm(w, r, v, http.StatusOK, roleFormData{Values: url.Values{}}, "")
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
	c.showRoleForm(w, r, v, http.StatusOK, roleFormData{Editing: ro.Name, Values: roleValues(ro), Windows: windows}, "")
}

func (c *Console) createRole(w http.ResponseWriter, r *http.Request, v *visit) {
	c.saveRole(w, r, v, "POST", proto.APIVersion+"/roles", roleFormData{Values: r.PostForm})
}

func (c *Console) updateRole(w http.ResponseWriter, r *http.Request, v *visit) {
	ro, ok := c.editedRole(w, r, v)
	if !ok {
		return
	}
	d := roleFormData{Editing: ro.Name, Values: r.PostForm}
	if ro.Restrictions != nil {
		d.Windows = ro.Restrictions.TimeWindows
	}
	c.saveRole(w, r, v, "PUT", proto.APIVersion+"/roles/"+url.PathEscape(ro.Name), d)
}

// saveRole sends the form's role; a refusal shows the form again as typed
// with the coordinator's sentence beside the field it names.
func (c *Console) saveRole(w http.ResponseWriter, r *http.Request, v *visit, method, path string, d roleFormData) {
	err := apiCall(r, v, method, path, formRole(d.Values, d.Windows), nil)
	if err == nil {
		http.Redirect(w, r, "/admin/roles?done=role-saved", http.StatusSeeOther)
		return
	}
	var pe *coordclient.Error
	if errors.As(err, &pe) && pe.Field != "" {
		d.Errs = map[string]string{strings.TrimPrefix(pe.Field, "restrictions."): sentence(err)}
		c.showRoleForm(w, r, v, statusOf(err), d, "The role was not saved: see the field marked below.")
		return
	}
	c.showRoleForm(w, r, v, statusOf(err), d, sentence(err))
}
