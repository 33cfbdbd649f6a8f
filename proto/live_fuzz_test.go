package proto

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzAgentStatus: the coordinator decodes every agent's status report
// (PUT AgentStatusPath) as the API decodes bodies, and validates it. Any
// bytes give a status or an error; an accepted status names each
// stream's target and encodes back to one that is accepted again.
func FuzzAgentStatus(f *testing.F) {
	f.Add([]byte(`{"version":"v1.2.3","ready":true,"paths":{"direct":1,"relayed":0},"streams":[{"id":"c-1","kind":"watch","user":"alice","device":"AQIDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","namespace":"default","resource":"pods","path":"/api/v1/namespaces/default/pods","started":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"version":"","ready":false,"paths":{"direct":0,"relayed":0},"streams":[{"id":"","kind":"exec"}]}`))
	f.Add([]byte(`{"streams":[{"id":"c-2","kind":"exec","name":"web-0","command":["sh","-c","<script>"],"path":"/x"}],"paths":{"direct":-1}}`))
	f.Add([]byte(`{"streams":null,"truncated":true}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeStatus(b)
		if err != nil || st.Validate() != nil {
			return
		}
		for i := range st.Streams {
			st.Streams[i].Target()
		}
		again, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		st2, err := decodeStatus(again)
		if err != nil {
			t.Fatalf("%s accepted, its encoding %s does not decode: %v", b, again, err)
		}
		if err := st2.Validate(); err != nil {
			t.Fatalf("%s accepted, its encoding %s not: %v", b, again, err)
		}
	})
}

// decodeStatus decodes as the coordinator's API does: unknown fields
// refused.
func decodeStatus(b []byte) (AgentStatus, error) {
	var st AgentStatus
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return st, dec.Decode(&st)
}
