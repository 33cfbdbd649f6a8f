package coordinator

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

// TestUnauthenticatedRoutesRateLimited: one source address gets a burst
// of unauthenticated requests, then 429 with Retry-After, on every route
// that needs no credential and on registrations whose credential is
// refused.
func TestUnauthenticatedRoutesRateLimited(t *testing.T) {
	const burst = 3
	tests := []struct {
		name, method, path, token string
		body                      any
	}{
		{"login start", "POST", "/api/v1/login/start", "", nil},
		{"token exchange", "POST", "/api/v1/login/token", "", proto.TokenExchangeRequest{IDToken: "not.a.token"}},
		{"callback", "GET", "/oidc/callback?state=nope&code=x", "", nil},
		{"agent with a bad join token", "POST", "/api/v1/agents", "cjt_wrong", proto.RegisterAgentRequest{}},
		{"agent without a join token", "POST", "/api/v1/agents", "", proto.RegisterAgentRequest{}},
		{"device with a bad session", "POST", "/api/v1/devices", "bad", proto.RegisterDeviceRequest{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnvWith(t, func(c *Config) { c.SourceRate, c.SourceBurst = 6, burst })
			for i := range burst {
				if status, _ := e.call(tt.method, tt.path, tt.token, tt.body, nil); status == http.StatusTooManyRequests {
					t.Fatalf("request %d of the burst = 429", i+1)
				}
			}
			req := httptest.NewRequest(tt.method, tt.path, nil)
			req.RemoteAddr = "127.0.0.1:1234"
			if tt.token != "" {
				req.Header.Set("Authorization", "Bearer "+tt.token)
			}
			rec := httptest.NewRecorder()
			e.srv.Handler().ServeHTTP(rec, req)
			if rec.Code != http.StatusTooManyRequests || rec.Header().Get(proto.HeaderErrorCode) != string(proto.CodeRateLimited) {
				t.Fatalf("request after the burst = %d %s, want 429 RATE_LIMITED", rec.Code, rec.Body)
			}
			if secs, err := strconv.Atoi(rec.Header().Get("Retry-After")); err != nil || secs < 1 || secs > 10 {
				t.Fatalf("Retry-After = %q, want 1..10 seconds", rec.Header().Get("Retry-After"))
			}
			if !strings.Contains(rec.Body.String(), "too many unauthenticated requests") {
				t.Fatalf("429 body = %s", rec.Body)
			}
			// Another address is not held back.
			req.RemoteAddr = "[2001:db8::1]:1234"
			rec = httptest.NewRecorder()
			e.srv.Handler().ServeHTTP(rec, req)
			if rec.Code == http.StatusTooManyRequests {
				t.Fatalf("another address = 429")
			}
		})
	}
}

// TestGoodCredentialsCostNoTokens: registrations with a valid credential
// are not limited, however many there are.
func TestGoodCredentialsCostNoTokens(t *testing.T) {
	e := newTestEnvWith(t, func(c *Config) { c.SourceRate, c.SourceBurst = 6, 2 })
	admin := e.login("admin@example.com")
	cl := e.createCluster(admin.Token, "prod")
	for range 5 {
		e.registerAgent(cl.JoinToken, "")
		e.must("POST", "/api/v1/devices", admin.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t)}, nil)
	}
}

func TestSourceOf(t *testing.T) {
	for _, tt := range []struct{ remote, want string }{
		{"192.0.2.7:443", "192.0.2.7"},
		{"[::ffff:192.0.2.7]:443", "192.0.2.7"},
		{"[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::"},
		{"[fe80::1%eth0]:443", "fe80::"},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = tt.remote
		if got := sourceOf(r).String(); got != tt.want {
			t.Errorf("sourceOf(%s) = %s, want %s", tt.remote, got, tt.want)
		}
	}
}

// TestFailedAttemptsAggregated: a flood of refused registrations and ID
// tokens from one source is stored as one event at once and one event
// with the count when the window closes, not one event each.
func TestFailedAttemptsAggregated(t *testing.T) {
	e := newTestEnvWith(t, func(c *Config) { c.SourceRate = -1 })
	admin := e.login("admin@example.com")
	const n = 50
	for range n {
		e.call("POST", "/api/v1/agents", "cjt_wrong", proto.RegisterAgentRequest{}, nil)
		e.call("POST", "/api/v1/login/token", "", proto.TokenExchangeRequest{IDToken: "not.a.token"}, nil)
	}
	e.srv.flushFailures(time.Now().Add(failureWindow))
	e.srv.flushAudit()
	var page proto.AuditPage
	e.must("GET", "/api/v1/audit/events?limit=1000&code="+string(proto.AuditAgentRefused)+","+string(proto.AuditIDTokenRefused), admin.Token, nil, &page)
	count := map[proto.AuditCode]int{}
	events := map[proto.AuditCode]int{}
	for _, ev := range page.Events {
		events[ev.Code]++
		c := 1
		if v := ev.Metadata["count"]; v != "" {
			c, _ = strconv.Atoi(v)
			if ev.Metadata["remote"] != "127.0.0.1" || ev.Metadata["first"] == "" || ev.Metadata["reason"] == "" {
				t.Errorf("aggregated event metadata = %v", ev.Metadata)
			}
		}
		count[ev.Code] += c
	}
	for _, code := range []proto.AuditCode{proto.AuditAgentRefused, proto.AuditIDTokenRefused} {
		if events[code] != 2 || count[code] != n {
			t.Errorf("%s: %d events counting %d failures, want 2 events counting %d", code, events[code], count[code], n)
		}
	}
}
