package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/oauth2"
)

// DexUser is a static Dex user (Dex's staticPasswords). Users log in with
// Email and Password.
type DexUser struct {
	Email    string
	Password string
	Username string // "name" claim; defaults to Email
	// UserID is the stable "sub" source; defaults to Email. Keep it when
	// changing a user's groups across restarts.
	UserID string
	// Groups end up in the "groups" claim when the "groups" scope is
	// requested.
	Groups []string
}

// DexClient is a static OAuth2 client of Dex.
type DexClient struct {
	ID           string
	Secret       string
	RedirectURIs []string
	// Public marks a client without a secret (native apps, device flow).
	Public bool
}

// DexOptions configure StartDex. The zero value starts Dex without users
// or clients besides the harness's own password-grant client.
type DexOptions struct {
	Users   []DexUser
	Clients []DexClient
}

// ServingCertPEM returns the certificate Dex serves, e.g. for a browser
// to accept (ChromeOptions.TrustCertPEMs).
func (d *Dex) ServingCertPEM() ([]byte, error) { return os.ReadFile(d.tlsCert) }

// Dex scopes requested by IDToken.
var dexScopes = []string{"openid", "email", "profile", "groups"}

// harnessClientID is the confidential client IDToken uses when
// DexOptions has no clients.
const harnessClientID = "clustral-harness"

// Dex is a Dex OIDC provider serving HTTPS on 127.0.0.1 with in-memory
// storage, the local password database (also used for the password
// grant), and the device flow. Methods are safe for concurrent use.
type Dex struct {
	// Issuer is the issuer URL, https://127.0.0.1:<port>/dex.
	Issuer string
	// CA signed Dex's serving certificate.
	CA *CA
	// CAPEM is CA.CertPEM.
	CAPEM []byte
	// LogPath is the file receiving Dex's output (across restarts).
	LogPath string

	dir        string
	bin        string
	port       int
	tlsCert    string
	tlsKey     string
	configPath string
	harness    DexClient

	mu   sync.Mutex
	opts DexOptions
	proc *Process
	pids []int // every process started, across restarts
}

// StartDex starts Dex with its files under dir and waits until its
// discovery document is served. The caller must call Close.
func StartDex(ctx context.Context, dir string, opts DexOptions) (*Dex, error) {
	bin, dir, ca, err := tlsComponentDir("dex", dir, "clustral-test-dex-ca")
	if err != nil {
		return nil, err
	}
	cert, key, err := ca.Issue("dex", nil, []string{"127.0.0.1", "localhost"}, false)
	if err != nil {
		return nil, fmt.Errorf("start dex: %w", err)
	}
	d := &Dex{
		CA:         ca,
		CAPEM:      ca.CertPEM,
		LogPath:    filepath.Join(dir, "dex.log"),
		dir:        dir,
		bin:        bin,
		tlsCert:    filepath.Join(dir, "tls.crt"),
		tlsKey:     filepath.Join(dir, "tls.key"),
		configPath: filepath.Join(dir, "config.json"),
		harness:    DexClient{ID: harnessClientID, Secret: randomToken(16), RedirectURIs: []string{"http://127.0.0.1/callback"}},
		opts:       opts,
	}
	if err := writeFiles(map[string][]byte{d.tlsCert: cert, d.tlsKey: key}); err != nil {
		return nil, fmt.Errorf("start dex: %w", err)
	}
	err = onFreePorts(1, func(ports []int) error {
		d.port = ports[0]
		d.Issuer = fmt.Sprintf("https://%s/dex", hostPort(d.port))
		return d.start(ctx)
	})
	if err != nil {
		return nil, fmt.Errorf("start dex: %w", err)
	}
	return d, nil
}

// dexConfig is the subset of Dex's configuration file the harness uses.
// Dex reads YAML, of which JSON is a subset.
type dexConfig struct {
	Issuer  string `json:"issuer"`
	Storage struct {
		Type string `json:"type"`
	} `json:"storage"`
	Web struct {
		HTTPS   string `json:"https"`
		TLSCert string `json:"tlsCert"`
		TLSKey  string `json:"tlsKey"`
	} `json:"web"`
	OAuth2 struct {
		SkipApprovalScreen bool   `json:"skipApprovalScreen"`
		PasswordConnector  string `json:"passwordConnector"`
	} `json:"oauth2"`
	Logger struct {
		Level string `json:"level"`
	} `json:"logger"`
	EnablePasswordDB bool                `json:"enablePasswordDB"`
	StaticPasswords  []dexStaticPassword `json:"staticPasswords"`
	StaticClients    []dexStaticClient   `json:"staticClients"`
}

type dexStaticPassword struct {
	Email    string   `json:"email"`
	Hash     string   `json:"hash"`
	Username string   `json:"username"`
	UserID   string   `json:"userID"`
	Groups   []string `json:"groups,omitempty"`
}

type dexStaticClient struct {
	ID           string   `json:"id"`
	Secret       string   `json:"secret,omitempty"`
	Name         string   `json:"name"`
	RedirectURIs []string `json:"redirectURIs"`
	Public       bool     `json:"public,omitempty"`
}

// writeConfig renders d.opts into d.configPath. d.mu must be held.
func (d *Dex) writeConfig() error {
	var c dexConfig
	c.Issuer = d.Issuer
	c.Storage.Type = "memory"
	c.Web.HTTPS = hostPort(d.port)
	c.Web.TLSCert = d.tlsCert
	c.Web.TLSKey = d.tlsKey
	c.OAuth2.SkipApprovalScreen = true
	c.OAuth2.PasswordConnector = "local"
	c.Logger.Level = "debug"
	c.EnablePasswordDB = true
	for _, u := range d.opts.Users {
		hash, err := bcrypt.GenerateFromPassword([]byte(u.Password), 10) // Dex rejects costs below 10
		if err != nil {
			return fmt.Errorf("hash password of %s: %w", u.Email, err)
		}
		p := dexStaticPassword{Email: u.Email, Hash: string(hash), Username: u.Username, UserID: u.UserID, Groups: u.Groups}
		if p.Username == "" {
			p.Username = u.Email
		}
		if p.UserID == "" {
			p.UserID = u.Email
		}
		c.StaticPasswords = append(c.StaticPasswords, p)
	}
	for _, cl := range append(slices.Clone(d.opts.Clients), d.harness) {
		c.StaticClients = append(c.StaticClients, dexStaticClient{
			ID: cl.ID, Secret: cl.Secret, Name: cl.ID, RedirectURIs: cl.RedirectURIs, Public: cl.Public,
		})
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(d.configPath, b, 0o600)
}

// start writes the config and starts Dex on d.port. d.mu must be held or
// d not yet shared.
func (d *Dex) start(ctx context.Context) error {
	if err := d.writeConfig(); err != nil {
		return err
	}
	p, err := StartProcess("dex", d.bin, []string{"serve", d.configPath}, EnvironWithout("DEX_"), d.LogPath)
	if err != nil {
		return err
	}
	d.pids = append(d.pids, p.Pid())
	hc := d.CA.HTTPClient()
	if err := p.waitReady(ctx, 30*time.Second, answersOK(hc, d.Issuer+"/.well-known/openid-configuration", nil)); err != nil {
		return err
	}
	d.proc = p
	return nil
}

// Restart stops Dex and starts it again with the same issuer, port and
// TLS certificate. If users is non-nil it replaces the static users, e.g.
// to change a user's groups between logins. Dex's storage is in memory:
// signing keys, sessions and refresh tokens do not survive a restart
// (relying parties refetch the JWKS on an unknown key id).
func (d *Dex) Restart(ctx context.Context, users []DexUser) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.proc.Stop()
	if users != nil {
		d.opts.Users = slices.Clone(users)
	}
	err := d.start(ctx)
	for i := 0; err != nil && i < 20 && errors.Is(err, errAddrInUse); i++ {
		// The old listener may linger briefly; wait for the port.
		time.Sleep(100 * time.Millisecond)
		err = d.start(ctx)
	}
	if err != nil {
		return fmt.Errorf("restart dex: %w", err)
	}
	return nil
}

// Pid returns Dex's current process id.
func (d *Dex) Pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.proc.Pid()
}

func (d *Dex) allPids() []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]int(nil), d.pids...)
}

// HTTPClient returns an http.Client trusting Dex's CA and the extra PEM
// CAs given.
func (d *Dex) HTTPClient(extraCAPEM ...[]byte) *http.Client {
	return d.CA.HTTPClient(extraCAPEM...)
}

// Endpoint returns Dex's OAuth2 endpoints.
func (d *Dex) Endpoint() oauth2.Endpoint {
	return oauth2.Endpoint{
		AuthURL:       d.Issuer + "/auth",
		TokenURL:      d.Issuer + "/token",
		DeviceAuthURL: d.Issuer + "/device/code",
		AuthStyle:     oauth2.AuthStyleInHeader,
	}
}

// PasswordToken runs the resource-owner password grant for client with
// the scopes openid, email, profile and groups. The ID token is in
// tok.Extra("id_token").
func (d *Dex) PasswordToken(ctx context.Context, client DexClient, email, password string) (*oauth2.Token, error) {
	cfg := oauth2.Config{ClientID: client.ID, ClientSecret: client.Secret, Endpoint: d.Endpoint(), Scopes: dexScopes}
	ctx = context.WithValue(ctx, oauth2.HTTPClient, d.HTTPClient())
	tok, err := cfg.PasswordCredentialsToken(ctx, email, password)
	if err != nil {
		return nil, fmt.Errorf("dex password grant for %s: %w", email, err)
	}
	return tok, nil
}

// IDToken returns a raw ID token for the user from the password grant.
// Its audience is the first client of DexOptions.Clients (normally the
// coordinator's), or the harness's own client if there is none.
func (d *Dex) IDToken(ctx context.Context, email, password string) (string, error) {
	d.mu.Lock()
	client := d.harness
	if len(d.opts.Clients) > 0 {
		client = d.opts.Clients[0]
	}
	d.mu.Unlock()
	tok, err := d.PasswordToken(ctx, client, email, password)
	if err != nil {
		return "", err
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return "", fmt.Errorf("dex password grant for %s: no id_token in response", email)
	}
	return raw, nil
}

// Close stops Dex.
func (d *Dex) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.proc.Stop()
	return nil
}
