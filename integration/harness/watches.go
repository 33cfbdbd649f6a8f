package harness

import (
	"bytes"
	"context"
	"fmt"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Watches returns the watches open at the apiserver per resource, from
// its own metrics (apiserver_longrunning_requests with verb WATCH).
func (a *APIServer) Watches(ctx context.Context) (map[string]float64, error) {
	raw, err := a.Client().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("apiserver metrics: %w", err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("apiserver metrics: %w", err)
	}
	out := make(map[string]float64)
	for _, m := range fams["apiserver_longrunning_requests"].GetMetric() {
		var verb, resource string
		for _, l := range m.GetLabel() {
			switch l.GetName() {
			case "verb":
				verb = l.GetValue()
			case "resource":
				resource = l.GetValue()
			}
		}
		if verb == "WATCH" {
			out[resource] += m.GetGauge().GetValue()
		}
	}
	return out, nil
}
