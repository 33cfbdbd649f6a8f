package auditlog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// KeyFile is the name of the checkpoint signing key in the data
// directory.
const KeyFile = "audit-checkpoint.key"

// DefaultCheckpointInterval is how often the coordinator signs a
// checkpoint of its audit log while the log grows.
const DefaultCheckpointInterval = 10 * time.Minute

// ErrNoRecords is a checkpoint asked of an empty log.
var ErrNoRecords = errors.New("the audit log has no records yet: there is nothing to sign")

// LoadKey reads the checkpoint key at path. With create, a missing
// key is generated and written there with mode 0600.
func LoadKey(path string, create bool) (ed25519.PrivateKey, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && create {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, err
		}
		if err := writeNewFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
			return nil, fmt.Errorf("create audit checkpoint key: %w", err)
		}
		return k, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read audit checkpoint key: %w", err)
	}
	b, _ := pem.Decode(raw)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("audit checkpoint key %s is not a PEM PRIVATE KEY: restore the file from where it was kept", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("audit checkpoint key %s: %w", path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("audit checkpoint key %s is not an Ed25519 key", path)
	}
	return ek, nil
}

// writeNewFile creates path with mode 0600 and writes b to it; it fails
// if path exists. The file is synced before it is closed.
func writeNewFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// SignCheckpoint signs the head of the audit log in tx at now, stores the
// checkpoint and returns it.
func SignCheckpoint(tx store.Tx, key ed25519.PrivateKey, now time.Time) (proto.AuditCheckpoint, error) {
	head, err := getMark(tx, MetaHead)
	if err != nil {
		return proto.AuditCheckpoint{}, err
	}
	if head.Seq == 0 {
		return proto.AuditCheckpoint{}, ErrNoRecords
	}
	c := proto.SignAuditCheckpoint(key, head.Seq, head.Hash, now)
	return c, store.Put(tx, store.AuditCheckpoints, Key(c.Seq), c)
}

// LastCheckpoint returns the newest stored checkpoint, the zero value if
// there is none.
func LastCheckpoint(tx store.Tx) (proto.AuditCheckpoint, error) {
	var last []byte
	err := tx.Scan(store.AuditCheckpoints, "", "", true, func(_ string, raw []byte) error {
		last = bytes.Clone(raw)
		return store.StopScan
	})
	var c proto.AuditCheckpoint
	if err != nil || last == nil {
		return c, err
	}
	if err := json.Unmarshal(last, &c); err != nil {
		return c, fmt.Errorf("decode the newest audit checkpoint: %w", err)
	}
	return c, nil
}
