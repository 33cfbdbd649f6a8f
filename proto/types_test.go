package proto

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
)

func TestKeyJSONRoundTrip(t *testing.T) {
	priv := testkit.WireGuardKey(t)
	k := Key(priv.PublicKey())
	b, err := json.Marshal(struct{ K Key }{k})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), k.String()) {
		t.Fatalf("marshal = %s, want base64 %s", b, k)
	}
	var out struct{ K Key }
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.K != k {
		t.Fatalf("round trip = %v, want %v", out.K, k)
	}
	if len(k.Hex()) != 64 {
		t.Fatalf("hex length = %d", len(k.Hex()))
	}
}

func TestKeyUnmarshalErrors(t *testing.T) {
	for _, in := range []string{`"not-base64!"`, `"AAAA"`, `""`} {
		var k Key
		if err := json.Unmarshal([]byte(in), &k); err == nil {
			t.Errorf("unmarshal %s: want error", in)
		}
	}
}

func TestDuration(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{`"1.5s"`, 1500 * time.Millisecond, false},
		{`"2m"`, 2 * time.Minute, false},
		{`15`, 0, true},
		{`"soon"`, 0, true},
	}
	for _, tt := range tests {
		var d Duration
		err := json.Unmarshal([]byte(tt.in), &d)
		if (err != nil) != tt.wantErr {
			t.Errorf("unmarshal %s: err = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if !tt.wantErr && time.Duration(d) != tt.want {
			t.Errorf("unmarshal %s = %v, want %v", tt.in, time.Duration(d), tt.want)
		}
	}
}
