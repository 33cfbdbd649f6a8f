package proto

import (
	"encoding/json"
	"testing"
)

// FuzzParseRecordingHeader: the coordinator reads the header of every
// recording an agent ships. Any bytes give a header or an error, and an
// accepted header encodes back to one that is accepted again.
func FuzzParseRecordingHeader(f *testing.F) {
	f.Add([]byte(`{"version":2,"width":80,"height":24,"timestamp":1,"clustral":{"id":"a-1","user":"alice","cluster":"prod","namespace":"default","pod":"p","subresource":"exec","protocol":"v5.channel.k8s.io","start":"2026-01-01T00:00:00Z","correlation":"a-1","stdin":false,"max_bytes":1024}}`))
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":2,"clustral":{"id":"","cluster":"x"}}`))
	f.Add([]byte(`[0.1, "o", "x"]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseRecordingHeader(b)
		if err != nil {
			return
		}
		again, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseRecordingHeader(again); err != nil {
			t.Fatalf("%s accepted, its encoding %s not: %v", b, again, err)
		}
	})
}
