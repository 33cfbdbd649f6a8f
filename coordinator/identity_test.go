package coordinator

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// exchange logs in with an ID token carrying exactly claims, by direct
// exchange, and returns the answer.
func (e *testEnv) exchange(claims map[string]any) (proto.Session, int, *proto.Problem) {
	e.t.Helper()
	e.iss.signInClaims(claims)
	var s proto.Session
	status, p := e.call("POST", "/api/v1/login/token", "", proto.TokenExchangeRequest{IDToken: e.iss.token(e.t, "clustral", "", time.Hour)}, &s)
	return s, status, p
}

// auditCodes returns the codes of every stored audit event, once the
// audit writer has stored what was queued.
func (e *testEnv) auditCodes(admin string) map[proto.AuditCode]int {
	e.t.Helper()
	e.srv.flushAudit()
	var page proto.AuditPage
	e.must("GET", "/api/v1/audit/events?limit=1000", admin, nil, &page)
	out := map[proto.AuditCode]int{}
	for _, ev := range page.Events {
		out[ev.Code]++
	}
	return out
}

// TestLoginCollisionRefused: a second identity whose login claim changes
// to an existing user's login does not take that login (and its admin
// rights and roles) over; the refusal is audited.
func TestLoginCollisionRefused(t *testing.T) {
	e := newTestEnv(t)
	admin := e.login("admin@example.com")
	mallory := e.login("mallory@example.com")
	tests := []struct {
		name, email string
	}{
		{"same login", "admin@example.com"},
		{"other case", "Admin@Example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Mallory's account at the provider now carries the admin's
			// address, verified.
			s, status, p := e.exchange(map[string]any{"sub": "sub-mallory@example.com", "email": tt.email, "email_verified": true})
			if status != http.StatusForbidden || !strings.Contains(p.Title, "already belongs to another user") {
				t.Fatalf("login = %d %+v (session %+v), want 403 naming the collision", status, p, s.User)
			}
		})
	}
	// A new subject claiming the login is refused the same way.
	if _, status, p := e.exchange(map[string]any{"sub": "sub-new", "email": "admin@example.com", "email_verified": true}); status != http.StatusForbidden || !strings.Contains(p.Title, "already belongs") {
		t.Fatalf("new subject = %d %+v", status, p)
	}
	var who proto.Whoami
	e.must("GET", "/api/v1/whoami", mallory.Token, nil, &who)
	if who.User.Login != "mallory@example.com" || who.User.Admin {
		t.Fatalf("mallory after the attempts = %+v", who.User)
	}
	var users []proto.User
	e.must("GET", "/api/v1/users", admin.Token, nil, &users)
	logins := map[string]int{}
	for _, u := range users {
		logins[strings.ToLower(u.Login)]++
	}
	if logins["admin@example.com"] != 1 {
		t.Fatalf("users = %+v: the admin login is held %d times", users, logins["admin@example.com"])
	}
	if got := e.auditCodes(admin.Token)[proto.AuditLoginCollision]; got != 3 {
		t.Fatalf("%s events = %d, want 3", proto.AuditLoginCollision, got)
	}
}

// TestEmailVerifiedMustBeTrue: only the boolean true verifies an email.
func TestEmailVerifiedMustBeTrue(t *testing.T) {
	e := newTestEnv(t)
	tests := []struct {
		name     string
		verified any // nil: claim absent
		ok       bool
	}{
		{"absent", nil, false},
		{"string false", "false", false},
		{"string true", "true", false},
		{"number", 1, false},
		{"false", false, false},
		{"true", true, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := map[string]any{"sub": "sub-" + tt.name, "email": "user" + string(rune('a'+i)) + "@example.com"}
			if tt.verified != nil {
				c["email_verified"] = tt.verified
			}
			_, status, p := e.exchange(c)
			if tt.ok && p != nil {
				t.Fatalf("login = %d %+v, want success", status, p)
			}
			if !tt.ok && (status != http.StatusForbidden || !strings.Contains(p.Title, "not verified")) {
				t.Fatalf("login = %d %+v, want 403 not verified", status, p)
			}
		})
	}
}

// TestAdminsMatchTheLoginClaim: with a login claim other than email, an
// account whose email (verified or not) is an administrator's address is
// not an administrator, and an unverified email is not kept.
func TestAdminsMatchTheLoginClaim(t *testing.T) {
	e := newTestEnvWith(t, func(c *Config) {
		c.OIDC.LoginClaim = "preferred_username"
		c.Admins = []string{"root", "admin@example.com"}
	})
	tests := []struct {
		name   string
		claims map[string]any
		admin  bool
		email  string
	}{
		{"admin by login", map[string]any{"sub": "s1", "preferred_username": "root", "email": "root@example.com", "email_verified": true}, true, "root@example.com"},
		{"admin email, verified", map[string]any{"sub": "s2", "preferred_username": "mallory", "email": "admin@example.com", "email_verified": true}, false, "admin@example.com"},
		{"admin email, unverified", map[string]any{"sub": "s3", "preferred_username": "eve", "email": "admin@example.com", "email_verified": "false"}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, status, p := e.exchange(tt.claims)
			if p != nil {
				t.Fatalf("login = %d %+v", status, p)
			}
			if s.User.Admin != tt.admin || s.User.Email != tt.email {
				t.Fatalf("user = %+v, want admin %v email %q", s.User, tt.admin, tt.email)
			}
		})
	}
}

// TestUserLookupByEmail: --user with an email finds the one user with
// that verified email, refuses an email several users have, and never
// matches an unverified one.
func TestUserLookupByEmail(t *testing.T) {
	e := newTestEnvWith(t, func(c *Config) {
		c.OIDC.LoginClaim = "preferred_username"
		c.Admins = []string{"root"}
	})
	root, _, p := e.exchange(map[string]any{"sub": "s0", "preferred_username": "root"})
	if p != nil {
		t.Fatalf("root login: %+v", p)
	}
	for _, c := range []map[string]any{
		{"sub": "s1", "preferred_username": "ann", "email": "ann@example.com", "email_verified": true},
		{"sub": "s2", "preferred_username": "bo1", "email": "bo@example.com", "email_verified": true},
		{"sub": "s3", "preferred_username": "bo2", "email": "bo@example.com", "email_verified": true},
		{"sub": "s4", "preferred_username": "cy", "email": "cy@example.com"},
	} {
		if _, status, p := e.exchange(c); p != nil {
			t.Fatalf("login %v = %d %+v", c, status, p)
		}
	}
	tests := []struct {
		ref    string
		status int
		login  string
	}{
		{"ann@example.com", http.StatusOK, "ann"},
		{"ANN@example.com", http.StatusOK, "ann"},
		{"bo1", http.StatusOK, "bo1"},
		{"bo@example.com", http.StatusConflict, ""},
		{"cy@example.com", http.StatusNotFound, ""},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			var u proto.User
			status, p := e.call("GET", "/api/v1/users/"+tt.ref, root.Token, nil, &u)
			if status != tt.status || (p == nil && u.Login != tt.login) {
				t.Fatalf("lookup = %d %+v %+v, want %d %q", status, p, u, tt.status, tt.login)
			}
		})
	}
}

// TestAllowRules: with allow rules, only the users they name (and the
// configured administrators) may log in.
func TestAllowRules(t *testing.T) {
	e := newTestEnvWith(t, func(c *Config) {
		c.Allow = AllowRules{EmailDomains: []string{"example.com"}, Groups: []string{"contractors"}, Users: []string{"guest@partner.io"}}
		c.Admins = []string{"root@elsewhere.org"}
	})
	tests := []struct {
		name   string
		claims map[string]any
		ok     bool
	}{
		{"domain", map[string]any{"sub": "a", "email": "ann@example.com", "email_verified": true}, true},
		{"domain, other case", map[string]any{"sub": "b", "email": "bo@EXAMPLE.com", "email_verified": true}, true},
		{"subdomain", map[string]any{"sub": "c", "email": "cy@evil.example.com", "email_verified": true}, false},
		{"suffix lookalike", map[string]any{"sub": "d", "email": "di@notexample.com", "email_verified": true}, false},
		{"group", map[string]any{"sub": "e", "email": "ed@gmail.com", "email_verified": true, "groups": []string{"contractors"}}, true},
		{"other group", map[string]any{"sub": "f", "email": "fi@gmail.com", "email_verified": true, "groups": []string{"friends"}}, false},
		{"user", map[string]any{"sub": "g", "email": "guest@partner.io", "email_verified": true}, true},
		{"admin", map[string]any{"sub": "h", "email": "root@elsewhere.org", "email_verified": true}, true},
		{"stranger", map[string]any{"sub": "i", "email": "x@gmail.com", "email_verified": true}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, status, p := e.exchange(tt.claims)
			if tt.ok != (p == nil) {
				t.Fatalf("login = %d %+v, want ok=%v", status, p, tt.ok)
			}
			if !tt.ok && (status != http.StatusForbidden || !strings.Contains(p.Title, "may not log in")) {
				t.Fatalf("refusal = %d %+v, want 403 naming the allow rules", status, p)
			}
		})
	}
}

// TestAllowRulesDomainNeedsVerifiedEmail: an email domain rule admits
// nobody on an unverified email, whatever the login claim.
func TestAllowRulesDomainNeedsVerifiedEmail(t *testing.T) {
	e := newTestEnvWith(t, func(c *Config) {
		c.OIDC.LoginClaim = "sub"
		c.Allow = AllowRules{EmailDomains: []string{"example.com"}}
	})
	if _, status, p := e.exchange(map[string]any{"sub": "x", "email": "ceo@example.com", "email_verified": "true"}); status != http.StatusForbidden {
		t.Fatalf("unverified email in the allowed domain = %d %+v, want 403", status, p)
	}
	if _, status, p := e.exchange(map[string]any{"sub": "y", "email": "ceo@example.com", "email_verified": true}); p != nil {
		t.Fatalf("verified email in the allowed domain = %d %+v", status, p)
	}
}

func TestAllowRulesConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string // "" = valid
	}{
		{"google without rule", Config{OIDC: OIDCConfig{Issuer: "https://accounts.google.com", ClientID: "c"}}, "anyone with an account"},
		{"github actions without rule", Config{OIDC: OIDCConfig{Issuer: "https://token.actions.githubusercontent.com", ClientID: "c"}}, "anyone with an account"},
		{"entra common without rule", Config{OIDC: OIDCConfig{Issuer: "https://login.microsoftonline.com/common/v2.0", ClientID: "c"}}, "anyone with an account"},
		{"google with domain", Config{OIDC: OIDCConfig{Issuer: "https://accounts.google.com", ClientID: "c"}, Allow: AllowRules{EmailDomains: []string{"@example.com"}}}, ""},
		{"entra tenant without rule", Config{OIDC: OIDCConfig{Issuer: "https://login.microsoftonline.com/0f4e8c1a-0000-4000-8000-000000000000/v2.0", ClientID: "c"}}, ""},
		{"private without rule", Config{OIDC: OIDCConfig{Issuer: "https://dex.example.com", ClientID: "c"}}, ""},
		{"wildcard domain", Config{Allow: AllowRules{EmailDomains: []string{"*.example.com"}}}, "not a domain name"},
		{"address as domain", Config{Allow: AllowRules{EmailDomains: []string{"bob@example.com"}}}, "not a domain name"},
		{"empty group", Config{Allow: AllowRules{Groups: []string{" "}}}, "allowed group is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.withDefaults()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestSharedLoginFromAnOlderStore: a store written before logins were
// unique may hold two users with one login; the one who had it first
// keeps it, whatever order the store lists them in.
func TestSharedLoginFromAnOlderStore(t *testing.T) {
	for _, newerFirst := range []bool{true, false} {
		t.Run(fmt.Sprint("newer id first ", newerFirst), func(t *testing.T) {
			e := newTestEnv(t)
			e.login("admin@example.com")
			t0 := time.Now().Add(-time.Hour)
			owner := user{ID: "usr_b", Subject: e.iss.URL + "#owner", Login: "alice@example.com", Created: t0}
			taker := user{ID: "usr_a", Subject: e.iss.URL + "#taker", Login: "Alice@example.com", Created: t0.Add(time.Minute)}
			if !newerFirst {
				owner.ID, taker.ID = "usr_a", "usr_b"
			}
			err := e.srv.store.Update(func(tx store.Tx) error {
				for _, u := range []user{owner, taker} {
					if err := store.Put(tx, store.Users, u.ID, &u); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			e.stop()
			e.start()
			if _, status, p := e.exchange(map[string]any{"sub": "taker", "email": "alice@example.com", "email_verified": true}); status != http.StatusForbidden {
				t.Fatalf("the later holder logs in = %d %+v, want 403", status, p)
			}
			if _, status, p := e.exchange(map[string]any{"sub": "owner", "email": "alice@example.com", "email_verified": true}); p != nil {
				t.Fatalf("the first holder logs in = %d %+v", status, p)
			}
		})
	}
}
