package coordinator

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// TestSecretsStoredHashed holds invariant 4 of docs/design.md for the
// coordinator's store: neither a join token, a node token nor a session's
// id appears in the database file, only their hashes, and the file is
// readable by its owner only.
func TestSecretsStoredHashed(t *testing.T) {
	e := newTestEnv(t)
	admin := e.login("admin@example.com")
	cl := e.createCluster(admin.Token, "prod")
	var agent proto.RegisterResponse
	e.must("POST", "/api/v1/agents", cl.JoinToken, proto.RegisterAgentRequest{PublicKey: newKey(t), Hostname: "node-1", CSR: newCSR(t)}, &agent)
	var dev proto.RegisterResponse
	e.must("POST", "/api/v1/devices", admin.Token, proto.RegisterDeviceRequest{PublicKey: newKey(t), Hostname: "laptop"}, &dev)

	sid := sessionID(t, admin.Token)
	e.stop() // close the store so every write is in the file

	db, err := os.ReadFile(filepath.Join(e.dir, "coordinator.db"))
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{
		"join token":    cl.JoinToken,
		"agent token":   agent.NodeToken,
		"device token":  dev.NodeToken,
		"session id":    sid,
		"session token": admin.Token,
	}
	for what, s := range secrets {
		if s == "" {
			t.Fatalf("%s is empty; the test cannot check it", what)
		}
		if bytes.Contains(db, []byte(s)) {
			t.Errorf("the store holds the %s in clear", what)
		}
	}
	if !bytes.Contains(db, []byte(hashSecret(cl.JoinToken))) {
		t.Errorf("the store holds no hash of the join token; the check above proves nothing")
	}
	testkit.CheckPerm(t, "store", filepath.Join(e.dir, "coordinator.db"), 0o600)
}

// sessionID returns the session id inside a session token.
func sessionID(t *testing.T, token string) string {
	t.Helper()
	var c sessionClaims
	if _, _, err := jwt.NewParser().ParseUnverified(token, &c); err != nil {
		t.Fatalf("parse session token: %v", err)
	}
	return c.SessionID
}
