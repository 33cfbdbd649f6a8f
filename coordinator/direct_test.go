package coordinator

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/clustral/clustral/proto"
)

// mint signs a token from the fake issuer with the given claims over the
// usual ones and the given JOSE header fields.
func (f *fakeIssuer) mint(t *testing.T, claims map[string]any, header map[string]any) string {
	t.Helper()
	c := jwt.MapClaims{"iss": f.URL, "aud": "clustral", "sub": "sub-eve", "email": "eve@example.com", "email_verified": true,
		"iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()}
	for k, v := range claims {
		c[k] = v
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, c)
	tok.Header["kid"] = "k1"
	for k, v := range header {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(f.key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestDirectExchangeChecksAZPAndRefusesAccessTokens(t *testing.T) {
	e := newTestEnv(t)
	tests := []struct {
		name   string
		claims map[string]any
		header map[string]any
		want   string // in the refusal; "" means accepted
	}{
		{"plain ID token", nil, nil, ""},
		{"azp is our client", map[string]any{"azp": "clustral"}, nil, ""},
		{"azp is another client", map[string]any{"azp": "some-web-app", "aud": []string{"clustral", "some-web-app"}}, nil, `issued to client "some-web-app" (azp)`},
		{"azp another client, our audience alone", map[string]any{"azp": "ci-bot"}, nil, `issued to client "ci-bot" (azp)`},
		{"RFC 9068 access token", nil, map[string]any{"typ": "at+jwt"}, "access token (JOSE type at+jwt)"},
		{"RFC 9068 media type", nil, map[string]any{"typ": "application/at+JWT"}, "access token"},
		{"Cognito access token", map[string]any{"token_use": "access"}, nil, "access token (token_use access)"},
		{"Keycloak access token", map[string]any{"typ": "Bearer"}, nil, "access token (typ Bearer)"},
		{"scope claim", map[string]any{"scope": "openid email"}, nil, "access token (scope claim)"},
		{"scp claim", map[string]any{"scp": []string{"api"}}, nil, "access token (scp claim)"},
		{"Cognito ID token", map[string]any{"token_use": "id"}, nil, ""},
		{"Keycloak ID token", map[string]any{"typ": "ID"}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s proto.Session
			status, p := e.call("POST", "/api/v1/login/token", "", proto.TokenExchangeRequest{IDToken: e.iss.mint(t, tt.claims, tt.header)}, &s)
			if tt.want == "" {
				if p != nil || s.Token == "" {
					t.Fatalf("= %d %+v, want a session", status, p)
				}
				return
			}
			if status != http.StatusUnauthorized || p.Code != proto.CodeLoginFailed || !strings.Contains(p.Title, tt.want) {
				t.Fatalf("= %d %+v, want 401 LOGIN_FAILED with %q", status, p, tt.want)
			}
		})
	}
}

func TestDirectExchangeAcceptsExtraAudienceAsAZP(t *testing.T) {
	e := newTestEnv(t)
	e.srv.oidc.cfg.ExtraAudiences = []string{"ci-bot"}
	var s proto.Session
	if status, p := e.call("POST", "/api/v1/login/token", "", proto.TokenExchangeRequest{IDToken: e.iss.mint(t, map[string]any{"azp": "ci-bot"}, nil)}, &s); p != nil {
		t.Fatalf("token of a listed client = %d %+v", status, p)
	}
}
