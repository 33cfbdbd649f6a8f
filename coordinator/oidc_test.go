package coordinator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

// fakeIssuer is a minimal OIDC provider for unit tests: discovery, JWKS,
// an authorize endpoint that signs in a preset user at once, and a token
// endpoint that checks PKCE. The integration suite uses the real Dex.
type fakeIssuer struct {
	*httptest.Server
	key *ecdsa.PrivateKey

	mu    sync.Mutex
	user  map[string]any // claims of whoever signs in next
	codes map[string]codeGrant
}

type codeGrant struct {
	nonce, challenge, clientID string
}

func newFakeIssuer(t *testing.T) *fakeIssuer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeIssuer{key: k, codes: map[string]codeGrant{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                f.URL,
			"authorization_endpoint":                f.URL + "/authorize",
			"token_endpoint":                        f.URL + "/token",
			"jwks_uri":                              f.URL + "/keys",
			"id_token_signing_alg_values_supported": []string{"ES256"},
		})
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	})
	mux.HandleFunc("/authorize", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("code_challenge_method") != "S256" {
			http.Error(w, "PKCE required", http.StatusBadRequest)
			return
		}
		code := rand.Text()
		f.mu.Lock()
		f.codes[code] = codeGrant{nonce: q.Get("nonce"), challenge: q.Get("code_challenge"), clientID: q.Get("client_id")}
		f.mu.Unlock()
		u, _ := url.Parse(q.Get("redirect_uri"))
		v := u.Query()
		v.Set("code", code)
		v.Set("state", q.Get("state"))
		u.RawQuery = v.Encode()
		http.Redirect(w, r, u.String(), http.StatusFound)
	})
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		f.mu.Lock()
		g, ok := f.codes[r.PostForm.Get("code")]
		delete(f.codes, r.PostForm.Get("code"))
		f.mu.Unlock()
		sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
		if !ok || base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge {
			http.Error(w, `{"error":"invalid_grant"}`, http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"access_token": "at", "token_type": "Bearer", "expires_in": 300,
			"id_token": f.token(t, g.clientID, g.nonce, time.Hour),
		})
	})
	f.Server = httptest.NewServer(mux)
	t.Cleanup(f.Close)
	return f
}

// signIn sets the claims of the next user to sign in.
func (f *fakeIssuer) signIn(email string, groups ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.user = map[string]any{"sub": "sub-" + email, "email": email, "email_verified": true, "name": email, "groups": groups}
}

// signInClaims sets the exact claims of the next user to sign in.
func (f *fakeIssuer) signInClaims(claims map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.user = claims
}

// token mints an ID token for the current user.
func (f *fakeIssuer) token(t *testing.T, aud, nonce string, ttl time.Duration) string {
	t.Helper()
	return f.tokenWith(t, f.key, aud, nonce, ttl)
}

func (f *fakeIssuer) tokenWith(t *testing.T, key *ecdsa.PrivateKey, aud, nonce string, ttl time.Duration) string {
	t.Helper()
	f.mu.Lock()
	claims := jwt.MapClaims{"iss": f.URL, "aud": aud, "iat": time.Now().Unix(), "exp": time.Now().Add(ttl).Unix()}
	for k, v := range f.user {
		claims[k] = v
	}
	f.mu.Unlock()
	if nonce != "" {
		claims["nonce"] = nonce
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	tok.Header["kid"] = "k1"
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
