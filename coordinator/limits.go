package coordinator

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"

	"github.com/clustral/clustral/proto"
)

// Bounds on the free-text fields of API requests. Every request body is
// also bounded whole (proto.MaxBodyBytes); these keep a single field from
// filling the store, the maps and the audit trail with one request.
const (
	maxDescription = 1000 // a role's description
	maxReason      = 1000 // an access request's reason, a decision's reason
	maxIdentifier  = 253  // a Kubernetes group or user name, an OIDC group, a user reference
	maxListItems   = 64   // entries in a list of groups, labels and the like
	maxLabelKey    = 63
	maxLabelValue  = 253
	maxCSR         = 16 << 10
)

// checkText answers 400 and returns false when the free-text field is
// longer than max bytes. (encoding/json has already replaced invalid
// UTF-8.)
func checkText(w http.ResponseWriter, field, value string, max int) bool {
	if len(value) > max {
		writeFieldProblem(w, field, fmt.Sprintf("%s is %d bytes, over the %d-byte limit", field, len(value), max), "shorten it")
		return false
	}
	return true
}

// writeFieldProblem answers 400 for the request field field (its JSON
// name; an index such as groups[2] names the list).
func writeFieldProblem(w http.ResponseWriter, field, title, hint string) {
	f, _, _ := strings.Cut(field, "[")
	writeProblemDoc(w, &proto.Problem{Status: http.StatusBadRequest, Code: proto.CodeBadRequest, Title: title, Hint: hint, Field: f})
}

// checkList answers 400 and returns false when the list has more than
// maxListItems entries or an entry fails checkText with max.
func checkList(w http.ResponseWriter, field string, values []string, max int) bool {
	if len(values) > maxListItems {
		writeFieldProblem(w, field, fmt.Sprintf("%s has %d entries, over the limit of %d", field, len(values), maxListItems), "name fewer")
		return false
	}
	for i, v := range values {
		if !checkText(w, fmt.Sprintf("%s[%d]", field, i), v, max) {
			return false
		}
	}
	return true
}

// checkLabels answers 400 and returns false unless labels has at most
// maxListItems entries with non-empty keys of at most maxLabelKey bytes
// and values of at most maxLabelValue.
func checkLabels(w http.ResponseWriter, field string, labels map[string]string) bool {
	if len(labels) > maxListItems {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("%s has %d entries, over the limit of %d", field, len(labels), maxListItems), "use fewer labels")
		return false
	}
	for k, v := range labels {
		if k == "" || len(k) > maxLabelKey {
			writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("label key %q is not valid", k), fmt.Sprintf("use a non-empty key of at most %d characters", maxLabelKey))
			return false
		}
		if !checkText(w, fmt.Sprintf("%s[%q]", field, k), v, maxLabelValue) {
			return false
		}
	}
	return true
}

// checkRestrictions bounds the lists of a role's restrictions, answering
// 400 itself and returning false when one is over (checkList); their
// meaning is checked by Restrictions.Validate.
func checkRestrictions(w http.ResponseWriter, r *proto.Restrictions) bool {
	if r == nil {
		return true
	}
	for _, l := range []struct {
		field  string
		values []string
	}{
		{"restrictions.namespaces", r.Namespaces},
		{"restrictions.api_groups", r.APIGroups},
		{"restrictions.resources", r.Resources},
		{"restrictions.verbs", r.Verbs},
		{"restrictions.resource_names", r.ResourceNames},
	} {
		if !checkList(w, l.field, l.values, maxIdentifier) {
			return false
		}
	}
	if len(r.TimeWindows) > maxListItems {
		writeFieldProblem(w, "restrictions.time_windows", fmt.Sprintf("restrictions.time_windows has %d entries, over the limit of %d", len(r.TimeWindows), maxListItems), "merge windows")
		return false
	}
	return true
}

var nameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`) })

// checkName answers 400 itself and returns false unless name is a DNS
// label, the form of cluster and role names.
func checkName(w http.ResponseWriter, what, name string) bool {
	if !nameRE().MatchString(name) {
		writeFieldProblem(w, "name", fmt.Sprintf("%s name %q is not valid", what, name), "use lowercase letters, digits and dashes (a DNS label), at most 63 characters")
		return false
	}
	return true
}
