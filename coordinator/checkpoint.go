package coordinator

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// Checkpoints anchor the audit chain outside the store. The chain alone
// catches an edit, but its head is in the same file as the records, so
// whoever can write that file can cut off its tail, or rewrite and rehash
// every record, and the chain still verifies. A checkpoint is the
// coordinator's Ed25519 signature over (sequence, hash, time) of the
// chain's head (proto.AuditCheckpoint). The coordinator signs one at
// start, every Config.AuditCheckpointInterval while the log grows, and
// when it stops, and keeps them in the AuditCheckpoints bucket; an
// administrator exports one on demand (POST /api/v1/audit/checkpoints,
// clustral audit checkpoint) to keep outside the coordinator.
//
// The signing key is not in the store: it is the file AuditKeyFile in the
// data directory (PKCS#8 PEM, mode 0600), created at first start. A
// rewrite of the store, or of a copy of it, cannot re-sign the
// checkpoints without it; one made by someone who could also read the key
// is caught by an exported checkpoint, which pins the key and the hash of
// its record.

// AuditKeyFile is the name of the checkpoint signing key in the data
// directory.
const AuditKeyFile = "audit-checkpoint.key"

// DefaultAuditCheckpointInterval is how often the coordinator signs a
// checkpoint of its audit log while the log grows.
const DefaultAuditCheckpointInterval = 10 * time.Minute

// errNoAuditRecords is a checkpoint asked of an empty log.
var errNoAuditRecords = errors.New("the audit log has no records yet: there is nothing to sign")

// loadAuditKey reads the checkpoint key at path. With create, a missing
// key is generated and written there with mode 0600.
func loadAuditKey(path string, create bool) (ed25519.PrivateKey, error) {
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

// signCheckpoint signs the head of the audit log in tx at now, stores the
// checkpoint and returns it.
func signCheckpoint(tx store.Tx, key ed25519.PrivateKey, now time.Time) (proto.AuditCheckpoint, error) {
	head, err := getMark(tx, metaAuditHead)
	if err != nil {
		return proto.AuditCheckpoint{}, err
	}
	if head.Seq == 0 {
		return proto.AuditCheckpoint{}, errNoAuditRecords
	}
	c := proto.SignAuditCheckpoint(key, head.Seq, head.Hash, now)
	return c, store.Put(tx, store.AuditCheckpoints, auditKey(c.Seq), c)
}

// lastCheckpoint returns the newest stored checkpoint, the zero value if
// there is none.
func lastCheckpoint(tx store.Tx) (proto.AuditCheckpoint, error) {
	var last []byte
	err := tx.ForEach(store.AuditCheckpoints, func(_ string, raw []byte) error {
		last = raw
		return nil
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

// checkpointAudit signs a checkpoint of the head unless the newest one
// already names it, or the log is empty.
func (s *Server) checkpointAudit() error {
	s.ckptMu.Lock()
	defer s.ckptMu.Unlock()
	var signed uint64
	err := s.st.Update(func(tx store.Tx) error {
		head, err := getMark(tx, metaAuditHead)
		if err != nil || head.Seq == 0 || head.Seq == s.lastCkpt {
			return err
		}
		c, err := signCheckpoint(tx, s.auditKey, s.now())
		signed = c.Seq
		return err
	})
	if err != nil {
		return fmt.Errorf("sign audit checkpoint: %w", err)
	}
	if signed != 0 {
		s.lastCkpt = signed
	}
	return nil
}

// auditSigner signs a checkpoint every AuditCheckpointInterval while the
// log grows, until Close.
func (s *Server) auditSigner() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.AuditCheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		if err := s.checkpointAudit(); err != nil {
			s.log.Error("audit checkpoint", "err", err)
		}
	}
}

// handleAuditCheckpoint serves POST /api/v1/audit/checkpoints: it records
// the export (AL001I) and signs a checkpoint that covers that record.
func (s *Server) handleAuditCheckpoint(w http.ResponseWriter, r *http.Request, p principal) {
	s.ckptMu.Lock()
	defer s.ckptMu.Unlock()
	var c proto.AuditCheckpoint
	err := s.st.Update(func(tx store.Tx) error {
		if _, err := appendAudit(tx, proto.AuditEvent{Code: proto.AuditCheckpointExport, Time: s.now(), Actor: p.user.Login,
			Metadata: map[string]string{"remote": r.RemoteAddr}}); err != nil {
			return err
		}
		var err error
		c, err = signCheckpoint(tx, s.auditKey, s.now())
		return err
	})
	if err != nil {
		s.writeInternal(w, "sign audit checkpoint", err, "")
		return
	}
	s.lastCkpt = c.Seq
	writeJSON(w, http.StatusOK, c)
}

// AuditVerifyOptions is what VerifyAudit checks besides the hash chain.
type AuditVerifyOptions struct {
	// Key is the coordinator's checkpoint public key. When set, every
	// checkpoint in the store must carry a valid signature by it, and the
	// log must hold the hash each one names at its record. When nil the
	// stored checkpoints are not looked at.
	Key ed25519.PublicKey
	// Against, when set, is an exported checkpoint the log must still
	// extend: signed by Key (if set), with its record still in the log
	// (or the retention anchor) carrying its hash.
	Against *proto.AuditCheckpoint
}

// checkpointClaim is what a checkpoint says the hash of one record is.
type checkpointClaim struct {
	hash string
	what string // "the checkpoint signed at ..."
}

// checkCheckpoint checks c's signature, and that key signed it.
func checkCheckpoint(c *proto.AuditCheckpoint, key ed25519.PublicKey) error {
	if err := c.Verify(); err != nil {
		return err
	}
	if k, _ := c.Key(); key != nil && !k.Equal(key) {
		return fmt.Errorf("it was signed by key %s, but the coordinator's checkpoint key is %s: the key file was replaced, or the checkpoint comes from another coordinator", c.KeyID(), proto.AuditKeyID(key))
	}
	return nil
}

func signedAt(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// checkpointClaims reads the stored checkpoints (with o.Key set) and
// o.Against, fills v's checkpoint fields, and returns what they say the
// hashes of the records after the anchor are. A checkpoint that does not
// hold, or names the anchor with another hash, fails through bad.
func checkpointClaims(tx store.Tx, o AuditVerifyOptions, anchor auditMark, v *proto.AuditVerification, bad func(uint64, string, ...any) error) (map[uint64][]checkpointClaim, error) {
	claims := map[uint64][]checkpointClaim{}
	claim := func(seq uint64, hash, what string) error {
		switch {
		case seq < anchor.Seq:
			return nil // retention removed the record, and the checkpoint with it
		case seq == anchor.Seq:
			if hash != anchor.Hash {
				return bad(seq, "record %d, the retention anchor, differs from %s: the log was rewritten", seq, what)
			}
			return nil
		}
		claims[seq] = append(claims[seq], checkpointClaim{hash, what})
		return nil
	}
	if o.Key != nil {
		v.Key = proto.AuditKeyID(o.Key)
		err := tx.ForEach(store.AuditCheckpoints, func(k string, raw []byte) error {
			seq, err := strconv.ParseUint(k, 10, 64)
			if err != nil {
				return bad(0, "unexpected key %q among the audit checkpoints", k)
			}
			var c proto.AuditCheckpoint
			if err := json.Unmarshal(raw, &c); err != nil {
				return bad(seq, "the checkpoint of record %d does not decode: %v", seq, err)
			}
			if err := checkCheckpoint(&c, o.Key); err != nil {
				return bad(seq, "the checkpoint of record %d is not valid: %v", seq, err)
			}
			if c.Seq != seq {
				return bad(seq, "the checkpoint stored for record %d names record %d (moved)", seq, c.Seq)
			}
			v.Checkpoints++
			v.SignedSeq, v.SignedAt = c.Seq, c.Time
			return claim(seq, c.Hash, "the checkpoint signed at "+signedAt(c.Time))
		})
		if err != nil {
			return nil, err
		}
	}
	if c := o.Against; c != nil {
		if err := checkCheckpoint(c, o.Key); err != nil {
			return nil, bad(c.Seq, "the exported checkpoint is not valid: %v", err)
		}
		if c.Seq < anchor.Seq {
			return nil, bad(c.Seq, "record %d of the exported checkpoint was pruned by retention (the log now starts after record %d), so the log can no longer be checked against it: check against a newer checkpoint", c.Seq, anchor.Seq)
		}
		if err := claim(c.Seq, c.Hash, "the exported checkpoint (signed at "+signedAt(c.Time)+")"); err != nil {
			return nil, err
		}
	}
	return claims, nil
}

// VerifyAuditDir verifies the audit log of the store in a coordinator's
// data directory, which no coordinator may be running on, with the
// checkpoint key kept there. Without a key file there, against (an
// exported checkpoint) must be given, and its key is used.
func VerifyAuditDir(dataDir string, against *proto.AuditCheckpoint) (proto.AuditVerification, error) {
	db := filepath.Join(dataDir, "coordinator.db")
	if _, err := os.Stat(db); err != nil {
		return proto.AuditVerification{}, fmt.Errorf("no coordinator store in %s: %w", dataDir, err)
	}
	var o AuditVerifyOptions
	keyPath := filepath.Join(dataDir, AuditKeyFile)
	k, err := loadAuditKey(keyPath, false)
	switch {
	case err == nil:
		o.Key = k.Public().(ed25519.PublicKey)
	case errors.Is(err, fs.ErrNotExist) && against != nil:
		if o.Key, err = against.Key(); err != nil {
			return proto.AuditVerification{}, fmt.Errorf("exported checkpoint: %w", err)
		}
	case errors.Is(err, fs.ErrNotExist):
		return proto.AuditVerification{}, fmt.Errorf("no audit checkpoint key at %s, so the signed checkpoints cannot be checked: give an exported checkpoint with --checkpoint, or copy the key file next to the store", keyPath)
	default:
		return proto.AuditVerification{}, err
	}
	o.Against = against
	st, err := store.OpenBolt(db)
	if err != nil {
		return proto.AuditVerification{}, err
	}
	defer st.Close()
	return VerifyAudit(st, o)
}
