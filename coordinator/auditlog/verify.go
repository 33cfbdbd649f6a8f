package auditlog

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// Verify checks the audit chain in st from the retention anchor to
// the head and names the first record that fails: one whose content does
// not match its hash (edited), that does not follow the one before
// (replaced or reordered), or that is missing (deleted). With o.Key it
// also checks the signed checkpoints in the store, and with o.Against an
// exported checkpoint (see VerifyOptions): a record whose hash is not
// the one a checkpoint signed was rewritten, and a log that ends before a
// checkpoint's record was cut back.
func Verify(st store.Store, o VerifyOptions) (proto.AuditVerification, error) {
	var v proto.AuditVerification
	err := st.View(func(tx store.Tx) error {
		v = proto.AuditVerification{Against: o.Against}
		head, anchor, err := Marks(tx)
		if err != nil {
			return err
		}
		v.Anchor = anchor.Hash
		prev, want := anchor.Hash, anchor.Seq+1
		fail := errors.New("stop")
		bad := func(seq uint64, format string, args ...any) error {
			v.BadSeq, v.Problem = seq, fmt.Sprintf(format, args...)
			return fail
		}
		claims, err := checkpointClaims(tx, o, anchor, &v, bad)
		if errors.Is(err, fail) {
			return nil
		}
		if err != nil {
			return err
		}
		err = tx.ForEach(store.Audit, func(k string, raw []byte) error {
			ks, err := strconv.ParseUint(k, 10, 64)
			if err != nil {
				return bad(want, "record %d: unexpected key %q in the audit log", want, k)
			}
			if ks < want {
				return bad(ks, "record %d is before the retention anchor (record %d) yet still present", ks, anchor.Seq)
			}
			if ks > want {
				return bad(want, "record %d is missing (deleted): the log goes from %d to %d", want, want-1, ks)
			}
			var e proto.AuditEvent
			if err := json.Unmarshal(raw, &e); err != nil {
				return bad(ks, "record %d does not decode: %v", ks, err)
			}
			if e.Seq != ks {
				return bad(ks, "record %d carries sequence %d (moved or edited)", ks, e.Seq)
			}
			if e.PrevHash != prev {
				return bad(ks, "record %d does not follow record %d: its previous hash differs (record %d or %d was replaced)", ks, ks-1, ks-1, ks)
			}
			if h := proto.AuditHash(e); h != e.Hash {
				return bad(ks, "record %d was edited: its content does not match its hash", ks)
			}
			for _, c := range claims[ks] {
				if c.hash != e.Hash {
					return bad(ks, "record %d differs from %s: the log was rewritten at or before record %d", ks, c.what, ks)
				}
			}
			delete(claims, ks)
			if o.Visit != nil {
				o.Visit(e)
			}
			if v.First == 0 {
				v.First = ks
			}
			v.Last, v.Checked = ks, v.Checked+1
			prev, want = e.Hash, ks+1
			return nil
		})
		if errors.Is(err, fail) {
			return nil
		}
		if err != nil {
			return err
		}
		switch {
		case head.Seq > want-1:
			bad(want, "records %d to %d are missing (deleted from the end of the log)", want, head.Seq)
			return nil
		case head.Seq < want-1:
			bad(head.Seq+1, "records after %d are not in the head of the log (%d): the head was edited", head.Seq, want-1)
			return nil
		case head.Hash != prev:
			bad(head.Seq, "record %d does not match the head of the log (replaced)", head.Seq)
			return nil
		}
		// What is left names records past the end of the log.
		var cut uint64
		var what string
		for seq, cs := range claims {
			if cut == 0 || seq < cut {
				cut, what = seq, cs[0].what
			}
		}
		if cut != 0 {
			bad(want, "the log ends at record %d, but %s names record %d: at least records %d to %d were cut off the end of the log", want-1, what, cut, want, cut)
			return nil
		}
		v.OK = true
		return nil
	})
	return v, err
}

// VerifyOptions is what Verify checks besides the hash chain.
type VerifyOptions struct {
	// Key is the coordinator's checkpoint public key. When set, every
	// checkpoint in the store must carry a valid signature by it, and the
	// log must hold the hash each one names at its record. When nil the
	// stored checkpoints are not looked at.
	Key ed25519.PublicKey
	// Against, when set, is an exported checkpoint the log must still
	// extend: signed by Key (if set), with its record still in the log
	// (or the retention anchor) carrying its hash.
	Against *proto.AuditCheckpoint
	// Visit, when set, is called with every record whose hash holds, in
	// order, inside the store's read transaction: it must not block.
	Visit func(proto.AuditEvent)
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
func checkpointClaims(tx store.Tx, o VerifyOptions, anchor Mark, v *proto.AuditVerification, bad func(uint64, string, ...any) error) (map[uint64][]checkpointClaim, error) {
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

// VerifyDir verifies the audit log of the store in a coordinator's
// data directory, which no coordinator may be running on, with the
// checkpoint key kept there. Without a key file there, against (an
// exported checkpoint) must be given, and its key is used.
func VerifyDir(dataDir string, against *proto.AuditCheckpoint) (proto.AuditVerification, error) {
	db := filepath.Join(dataDir, "coordinator.db")
	if _, err := os.Stat(db); err != nil {
		return proto.AuditVerification{}, fmt.Errorf("no coordinator store in %s: %w", dataDir, err)
	}
	var o VerifyOptions
	keyPath := filepath.Join(dataDir, KeyFile)
	k, err := LoadKey(keyPath, false)
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
	return Verify(st, o)
}
