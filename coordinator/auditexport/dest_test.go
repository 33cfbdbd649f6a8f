package auditexport

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParse(t *testing.T) {
	ca, _ := testCA(t)
	caFile := writeFile(t, "ca.pem", string(ca))
	hdr := writeFile(t, "headers", "# the collector's token\nAuthorization: Bearer s3cret\n\nx-scope-orgid: audit\n")
	t.Setenv("TEST_OTLP_HEADERS", "X-Scope-OrgID: override")
	tests := []struct {
		raw   string
		check func(t *testing.T, d Destination)
		err   string // in the error, when it must fail
	}{
		{raw: "syslog+tls://siem.example.com?ca=" + caFile, check: func(t *testing.T, d Destination) {
			if d.Kind != KindSyslog || d.Addr != "siem.example.com:6514" || d.Name != "syslog+tls://siem.example.com:6514" ||
				d.TLS == nil || d.TLS.RootCAs == nil || d.TLS.ServerName != "siem.example.com" || d.Facility != 13 || d.SDID != DefaultSDID || d.Start != StartOldest {
				t.Errorf("%+v", d)
			}
		}},
		{raw: "syslog+tls://[::1]:1514?name=siem&app-name=mesh&hostname=coord-1&facility=10&sd-id=audit@99999&start=now&batch=50&retry-max=1m&ack-wait=1s", check: func(t *testing.T, d Destination) {
			if d.Addr != "[::1]:1514" || d.Name != "siem" || d.AppName != "mesh" || d.Hostname != "coord-1" || d.Facility != 10 ||
				d.SDID != "audit@99999" || d.Start != StartNow || d.Batch != 50 || d.RetryMax != time.Minute || d.AckWait != time.Second {
				t.Errorf("%+v", d)
			}
		}},
		{raw: "otlp+https://otel.example.com?headers-file=" + hdr + "&headers-env=TEST_OTLP_HEADERS", check: func(t *testing.T, d Destination) {
			if d.Kind != KindOTLP || d.Endpoint != "https://otel.example.com:4318/v1/logs" || d.Name != "otlp+https://otel.example.com:4318/v1/logs" ||
				d.Headers["Authorization"] != "Bearer s3cret" || d.Headers["X-Scope-Orgid"] != "override" || len(d.Headers) != 2 {
				t.Errorf("%+v", d)
			}
		}},
		{raw: "otlp+https://127.0.0.1:4318/custom/path?server-name=otel.internal", check: func(t *testing.T, d Destination) {
			if d.Endpoint != "https://127.0.0.1:4318/custom/path" || d.TLS.ServerName != "otel.internal" {
				t.Errorf("%+v", d)
			}
		}},
		{raw: "syslog://siem:514", err: "only over TLS"},
		{raw: "udp://siem:514", err: "only over TLS"},
		{raw: "https://otel:4318", err: "otlp+https://"},
		{raw: "kafka://broker", err: `unknown scheme "kafka"`},
		{raw: "otlp+https://user:pa55@otel.example.com", err: "headers-file="},
		{raw: "otlp+http://127.0.0.1:4318", err: "over HTTPS"},
		{raw: "syslog+tls://", err: "no host"},
		{raw: "syslog+tls://siem?tls=on", err: `unknown setting "tls"`},
		{raw: "syslog+tls://siem?headers-file=x", err: `unknown setting "headers-file"`},
		{raw: "syslog+tls://siem/path", err: "no path"},
		{raw: "syslog+tls://siem?name=a&name=b", err: "give it once"},
		{raw: "syslog+tls://siem?name=has space", err: "letters, digits"},
		{raw: "syslog+tls://siem?start=yesterday", err: "start=oldest"},
		{raw: "syslog+tls://siem?batch=0", err: "batch="},
		{raw: "syslog+tls://siem?retry-max=soon", err: "positive duration"},
		{raw: "syslog+tls://siem?retry-min=1m&retry-max=1s", err: "raise retry-max"},
		{raw: "syslog+tls://siem?facility=24", err: "0 to 23"},
		{raw: "syslog+tls://siem?sd-id=noat", err: "enterprise number"},
		{raw: "syslog+tls://siem?app-name=" + strings.Repeat("a", 49), err: "1-48"},
		{raw: "syslog+tls://siem?ca=/nonexistent/ca.pem", err: "ca=/nonexistent/ca.pem"},
		{raw: "syslog+tls://siem?ca=" + hdr, err: "no PEM certificate"},
		{raw: "syslog+tls://siem?cert=" + caFile, err: "both cert= and key="},
		{raw: "otlp+https://otel?headers-env=TEST_UNSET_VARIABLE", err: "not set"},
		{raw: "otlp+https://otel?headers-file=" + writeFile(t, "bad", "Bearer abc\n"), err: "line 1 is not a header"},
		{raw: "syslog+tls://siem:6514#frag", err: "fragment"},
		{raw: "%zz://x", err: "not a URL"},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			d, err := Parse(tt.raw)
			if tt.err != "" {
				if err == nil || !contains(err.Error(), tt.err) {
					t.Fatalf("Parse = %v, want an error with %q", err, tt.err)
				}
				for _, secret := range []string{"pa55", "s3cret"} {
					if contains(err.Error(), secret) {
						t.Fatalf("the error shows a secret: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, d)
		})
	}
}
