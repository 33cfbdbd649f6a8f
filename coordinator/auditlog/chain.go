package auditlog

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// The Meta keys of the chain's head and of its retention anchor, each a
// Mark.
const (
	MetaHead   = "audit_head"
	MetaAnchor = "audit_anchor"
)

// DefaultRetention is how long the coordinator keeps audit events.
const DefaultRetention = 90 * 24 * time.Hour

// Mark names one record of the chain by sequence and hash.
type Mark struct {
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	Time time.Time `json:"time,omitzero"`
}

// Key is the Audit bucket key of record seq (and the AuditCheckpoints
// key of its checkpoint).
func Key(seq uint64) string { return fmt.Sprintf("%020d", seq) }

func getMark(tx store.Tx, key string) (Mark, error) {
	var m Mark
	if err := store.Get(tx, store.Meta, key, &m); err != nil && !errors.Is(err, store.ErrNotFound) {
		return m, err
	}
	return m, nil
}

// Head reads the head of the log in tx, zero while the log is empty.
func Head(tx store.Tx) (Mark, error) { return getMark(tx, MetaHead) }

// Marks reads the head and the retention anchor of the audit log in
// tx; either is zero while it has not been stored.
func Marks(tx store.Tx) (head, anchor Mark, err error) {
	if head, err = getMark(tx, MetaHead); err != nil {
		return head, anchor, err
	}
	anchor, err = getMark(tx, MetaAnchor)
	return head, anchor, err
}

// readRecord reads and decodes record seq in tx; its error wraps
// store.ErrNotFound when the record is absent. Seq is where it is
// stored, whatever the record claims.
func readRecord(tx store.Tx, seq uint64) (proto.AuditEvent, error) {
	var e proto.AuditEvent
	raw, err := tx.GetRaw(store.Audit, Key(seq))
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal(raw, &e); err != nil {
		return e, fmt.Errorf("decode audit event %d: %w", seq, err)
	}
	e.Seq = seq
	return e, nil
}

// Append numbers e, chains it to the head and stores it in tx with its
// index entries. It fills Category from the catalogue when it is empty.
func Append(tx store.Tx, e proto.AuditEvent) (proto.AuditEvent, error) {
	head, err := getMark(tx, MetaHead)
	if err != nil {
		return e, err
	}
	seq, err := tx.NextSequence(store.Audit)
	if err != nil {
		return e, err
	}
	if e.Category == "" {
		if info, ok := proto.LookupAuditCode(e.Code); ok {
			e.Category = info.Category
		}
	}
	if e.Outcome == "" {
		e.Outcome = proto.OutcomeSuccess
	}
	e.Seq, e.PrevHash, e.Time = seq, head.Hash, e.Time.UTC()
	e, raw := proto.SealAudit(e)
	if err := tx.PutRaw(store.Audit, Key(seq), raw); err != nil {
		return e, err
	}
	if err := index(tx, &e); err != nil {
		return e, err
	}
	if head.Seq == 0 {
		// The log's first record: the index covers it from its start.
		if err := store.Put(tx, store.Meta, MetaIndex, indexState{}); err != nil {
			return e, err
		}
	}
	return e, store.Put(tx, store.Meta, MetaHead, Mark{Seq: seq, Hash: e.Hash})
}
