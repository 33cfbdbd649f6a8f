package proto

import (
	"strings"
	"testing"
)

func TestRestrictionsValidate(t *testing.T) {
	tests := []struct {
		name string
		r    *Restrictions
		want string // "" = valid
	}{
		{"nil", nil, ""},
		{"good", &Restrictions{Verbs: []string{"get", "list"}, Resources: []string{"pods", "pods/log"},
			TimeWindows: []TimeWindow{{Days: []string{"mon", "Fri"}, Start: "09:00", End: "18:00", TimeZone: "Europe/Berlin"}}}, ""},
		{"overnight", &Restrictions{TimeWindows: []TimeWindow{{Start: "22:00", End: "06:00"}}}, ""},
		{"bad verb", &Restrictions{Verbs: []string{"destroy"}}, `unknown verb "destroy"`},
		{"bad resource", &Restrictions{Resources: []string{"a/b/c"}}, "plural name"},
		{"bad day", &Restrictions{TimeWindows: []TimeWindow{{Days: []string{"funday"}, Start: "09:00", End: "10:00"}}}, `unknown day "funday"`},
		{"bad clock", &Restrictions{TimeWindows: []TimeWindow{{Start: "9am", End: "10:00"}}}, "HH:MM"},
		{"empty window", &Restrictions{TimeWindows: []TimeWindow{{Start: "10:00", End: "10:00"}}}, "empty"},
		{"bad zone", &Restrictions{TimeWindows: []TimeWindow{{Start: "09:00", End: "10:00", TimeZone: "Mars/Olympus"}}}, "IANA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.r.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}
