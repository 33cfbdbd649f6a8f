package cli

import (
	"strings"
	"testing"

	"github.com/clustral/clustral/coordinator"
)

func TestCoordinatorURLRefusesPlainHTTPToOtherHosts(t *testing.T) {
	tests := []struct {
		in       string
		insecure bool
		want     string // "" means refused
	}{
		{"clustral.example.com", false, "https://clustral.example.com"},
		{"https://clustral.example.com/", false, "https://clustral.example.com"},
		{"http://127.0.0.1:7443", false, "http://127.0.0.1:7443"},
		{"http://127.9.9.9:7443", false, "http://127.9.9.9:7443"},
		{"http://[::1]:7443", false, "http://[::1]:7443"},
		{"http://localhost:7443", false, "http://localhost:7443"},
		{"http://clustral.example.com", false, ""},
		{"http://10.0.0.5:7443", false, ""},
		{"http://localhost.example.com", false, ""},
		{"http://127.0.0.1.nip.io", false, ""},
		{"http://[::ffff:10.0.0.5]:7443", false, ""},
		{"http://clustral.example.com", true, "http://clustral.example.com"},
		// Several replicas: each normalized, and each judged.
		{"c0.example.com, https://c1.example.com/", false, "https://c0.example.com,https://c1.example.com"},
		{"http://127.0.0.1:7443,http://127.0.0.1:7444", false, "http://127.0.0.1:7443,http://127.0.0.1:7444"},
		{"https://c0.example.com,http://c1.example.com", false, ""},
	}
	for _, tt := range tests {
		got, err := coordinatorURL(tt.in, tt.insecure)
		switch {
		case tt.want == "" && err == nil:
			t.Errorf("coordinatorURL(%q, %v) = %q, want refused", tt.in, tt.insecure, got)
		case tt.want == "" && !strings.Contains(err.Error(), "--insecure"):
			t.Errorf("coordinatorURL(%q) error %q does not name --insecure", tt.in, err)
		case tt.want != "" && (err != nil || got != tt.want):
			t.Errorf("coordinatorURL(%q, %v) = %q, %v; want %q", tt.in, tt.insecure, got, err, tt.want)
		}
	}
}

func TestLoginAndAgentRefusePlainHTTP(t *testing.T) {
	e := newBareEnv(t)
	for _, args := range [][]string{
		{"login", "http://clustral.example.com"},
		{"agent", "--coordinator", "http://clustral.example.com", "--join-token", "cjt_x"},
		{"coordinator", "backup", "--coordinator", "http://clustral.example.com", t.TempDir() + "/b.db"},
	} {
		code, _, errb := e.run(args...)
		if code != exitUsage || !strings.Contains(errb, "plain HTTP") || !strings.Contains(errb, "--insecure") {
			t.Errorf("%v: exit %d, stderr %q; want a usage error naming --insecure", args, code, errb)
		}
	}
}

func TestManifestWarnsOfPlainHTTP(t *testing.T) {
	for _, tt := range []struct {
		url  string
		warn bool
	}{
		{"http://10.0.0.5:7443", true},
		{"https://clustral.example.com", false},
	} {
		e := newRealEnv(t, func(c *coordinator.Config) { c.Admins = []string{"alice@example.com"} })
		e.useSession(e.real.Login("alice@example.com"))
		code, out, errb := e.run("clusters", "add", "qa", "--manifest", "--manifest-coordinator-url", tt.url)
		if code != 0 || !strings.Contains(out, tt.url) {
			t.Fatalf("%s: exit %d, stdout %q, stderr %q", tt.url, code, out, errb)
		}
		if got := strings.Contains(errb, "agents refuse the plain-HTTP coordinator") && strings.Contains(errb, "CLUSTRAL_INSECURE"); got != tt.warn {
			t.Errorf("%s: warned = %v, want %v; stderr %q", tt.url, got, tt.warn, errb)
		}
	}
}
