package proto

import (
	"encoding/json"
	"testing"
)

func TestParseLiveEvent(t *testing.T) {
	for _, tc := range []struct {
		line string
		ok   bool
	}{
		{`{"type":"snapshot","epoch":"e","rev":3}`, true},
		{`{"type":"upsert","epoch":"e","rev":4,"kind":"pods","namespace":"a","name":"p","object":{"kind":"Pod"}}`, true},
		{`{"type":"delete","epoch":"e","rev":5,"kind":"nodes","name":"n"}`, true},
		{`{"type":"synced","epoch":"e","rev":5}`, true},
		{`{"type":"ping","epoch":"e","rev":5}`, true},
		{`{"type":"upsert","epoch":"e","rev":4,"kind":"pods","name":"p","object":[1]}`, false},
		{`{"type":"upsert","epoch":"e","rev":4,"kind":"pods","name":"p"}`, false},
		{`{"type":"delete","epoch":"e","rev":4,"kind":"pods"}`, false},
		{`{"type":"snapshot","epoch":"e","rev":3,"name":"x"}`, false},
		{`{"type":"synced","rev":3}`, false},
		{`{"type":"reset","epoch":"e"}`, false},
		{`{"type":"ping","epoch":"e"} {}`, false},
		{`not json`, false},
	} {
		_, err := ParseLiveEvent([]byte(tc.line))
		if (err == nil) != tc.ok {
			t.Errorf("ParseLiveEvent(%s) error %v, want ok %v", tc.line, err, tc.ok)
		}
	}
}

func TestParseLiveCursor(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want LiveCursor
		ok   bool
	}{
		{"", LiveCursor{}, true},
		{"abc:12", LiveCursor{"abc", 12}, true},
		{"abc", LiveCursor{}, false},
		{":12", LiveCursor{}, false},
		{"abc:-1", LiveCursor{}, false},
	} {
		got, err := ParseLiveCursor(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseLiveCursor(%q) = %v, %v; want %v ok %v", tc.in, got, err, tc.want, tc.ok)
		}
		if tc.ok && tc.in != "" && got.String() != tc.in {
			t.Errorf("%q reads back as %q", tc.in, got.String())
		}
	}
}

// FuzzParseLiveEvent: a device reads every line of an agent's live
// stream. Any bytes give an event or an error, and an accepted event
// encodes to one that is accepted again, naming the same object.
func FuzzParseLiveEvent(f *testing.F) {
	f.Add([]byte(`{"type":"upsert","epoch":"e","rev":4,"kind":"pods","namespace":"a","name":"p","object":{"kind":"Pod"}}`))
	f.Add([]byte(`{"type":"snapshot","epoch":"e","rev":3}`))
	f.Add([]byte(`{"type":"delete","epoch":"e","rev":5,"kind":"nodes","name":"n"}`))
	f.Add([]byte(`{"type":"synced","epoch":"e","rev":18446744073709551615}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseLiveEvent(b)
		if err != nil {
			return
		}
		again, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		e2, err := ParseLiveEvent(again)
		if err != nil {
			t.Fatalf("%s accepted, its encoding %s not: %v", b, again, err)
		}
		if e2.Key() != e.Key() || e2.Rev != e.Rev || e2.Type != e.Type {
			t.Fatalf("%s reads back as %+v, was %+v", again, e2, e)
		}
	})
}

// FuzzParseLiveCursor: the agent reads ?since from any viewer, and
// clustral ui reads Last-Event-ID from the browser. Any string gives a
// cursor or an error, and an accepted cursor reads back as itself.
func FuzzParseLiveCursor(f *testing.F) {
	f.Add("")
	f.Add("abc:12")
	f.Add("abc:18446744073709551616")
	f.Add("a:b:1")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseLiveCursor(s)
		if err != nil || s == "" {
			return
		}
		again, err := ParseLiveCursor(c.String())
		if err != nil || again != c {
			t.Fatalf("%q reads as %+v, whose string %q reads as %+v (%v)", s, c, c.String(), again, err)
		}
	})
}
