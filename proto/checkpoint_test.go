package proto

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

var testCheckpointKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, ed25519.SeedSize))

func testCheckpoint() AuditCheckpoint {
	return SignAuditCheckpoint(testCheckpointKey, 42, strings.Repeat("0f", 32), time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC))
}

func TestParseAuditCheckpoint(t *testing.T) {
	good, err := json.Marshal(testCheckpoint())
	if err != nil {
		t.Fatal(err)
	}
	edit := func(fn func(*AuditCheckpoint)) string {
		c := testCheckpoint()
		fn(&c)
		b, _ := json.Marshal(c)
		return string(b)
	}
	other := SignAuditCheckpoint(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, ed25519.SeedSize)), 42, strings.Repeat("0f", 32), time.Unix(0, 0))
	tests := []struct {
		name, doc, err string
	}{
		{"as signed", string(good), ""},
		{"indented", func() string { b, _ := json.MarshalIndent(testCheckpoint(), "", "  "); return string(b) + "\n" }(), ""},
		{"seq edited", edit(func(c *AuditCheckpoint) { c.Seq++ }), "signature does not match"},
		{"hash edited", edit(func(c *AuditCheckpoint) { c.Hash = strings.Repeat("1f", 32) }), "signature does not match"},
		{"time edited", edit(func(c *AuditCheckpoint) { c.Time = c.Time.Add(time.Nanosecond) }), "signature does not match"},
		{"key swapped", edit(func(c *AuditCheckpoint) { c.PublicKey = other.PublicKey }), "signature does not match"},
		{"uppercase hash", edit(func(c *AuditCheckpoint) { c.Hash = strings.ToUpper(c.Hash) }), "lowercase hex"},
		{"no seq", edit(func(c *AuditCheckpoint) { c.Seq = 0 }), "seq is missing"},
		{"no time", edit(func(c *AuditCheckpoint) { c.Time = time.Time{} }), "time is missing"},
		{"short key", edit(func(c *AuditCheckpoint) { c.PublicKey = "AAAA" }), "public_key"},
		{"bad signature", edit(func(c *AuditCheckpoint) { c.Signature = "!" }), "signature is not"},
		{"unknown field", strings.Replace(string(good), `{`, `{"note":"x",`, 1), "unknown field"},
		{"two documents", string(good) + string(good), "data after"},
		{"not JSON", "seq: 42", "not a JSON"},
		{"too large", strings.Repeat(" ", MaxAuditCheckpointBytes) + string(good), "over"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseAuditCheckpoint([]byte(tt.doc))
			if tt.err == "" {
				if err != nil || c.Seq != 42 || c.KeyID() != AuditKeyID(testCheckpointKey.Public().(ed25519.PublicKey)) {
					t.Fatalf("parse = %+v, %v", c, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err = %v, want one with %q", err, tt.err)
			}
		})
	}
}

// FuzzParseAuditCheckpoint feeds arbitrary files to the parser of
// exported checkpoints: it must not panic, and whatever it accepts must
// verify and read back the same from its own encoding. Only the test
// key's own signatures verify under it.
func FuzzParseAuditCheckpoint(f *testing.F) {
	good, _ := json.Marshal(testCheckpoint())
	f.Add(good)
	f.Add(bytes.Replace(good, []byte(`"seq":42`), []byte(`"seq":43`), 1))
	f.Add([]byte(`{"seq":1,"hash":"` + strings.Repeat("a", 64) + `","time":"2026-01-01T00:00:00Z","public_key":"","signature":""}`))
	f.Add([]byte(`{"seq":18446744073709551615,"time":"9999-12-31T23:59:59.999999999-23:59"}`))
	f.Add([]byte(`{} {}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseAuditCheckpoint(b)
		if err != nil {
			return
		}
		if err := c.Verify(); err != nil {
			t.Fatalf("accepted %q, which does not verify: %v", b, err)
		}
		again, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("accepted %q, which does not encode: %v", b, err)
		}
		c2, err := ParseAuditCheckpoint(again)
		if err != nil || c2.Seq != c.Seq || c2.Hash != c.Hash || !c2.Time.Equal(c.Time) || c2.Signature != c.Signature {
			t.Fatalf("accepted %q, which reads back as %+v, %v", b, c2, err)
		}
		if c.PublicKey == testCheckpoint().PublicKey && (c.Seq != 42 || c.Hash != testCheckpoint().Hash || !c.Time.Equal(testCheckpoint().Time)) {
			t.Fatalf("forged a checkpoint of the test key: %q", b)
		}
	})
}
