package auditlog

import (
	"fmt"
	"math"
	"time"

	"github.com/clustral/clustral/coordinator/store"
)

// maxPrunePerTx bounds the records one pruning transaction removes.
const maxPrunePerTx = 10_000

// MaxSkew is how far ahead of the coordinator's clock an event may
// be dated. An agent's event dated further ahead is stored with the time
// the coordinator received it; a stored record dated
// further ahead (written before that rule, or while the coordinator's own
// clock was wrong) does not hold back retention (Prune).
const MaxSkew = 5 * time.Minute

// Prune removes the records of whole UTC days that lie entirely
// before now minus the retention, oldest first, and moves the anchor to
// the last one removed. It returns how many it removed. A record dated
// more than MaxSkew after now cannot be dated right; it is kept as
// long as the first correctly dated record after it, so that one such
// record does not stop retention for everything behind it; a run of them
// (a coordinator whose clock ran ahead for a while) goes in as many
// commits as the store needs, however long it is. Checkpoints
// of removed records are removed with them.
func Prune(st store.Store, retention time.Duration, now time.Time) (int, error) {
	return PruneHeld(st, retention, now, math.MaxUint64)
}

// PruneHeld is Prune that removes no record after hold: the records an
// export destination has not taken yet (see package auditexport) stay
// until it has, however old they are.
func PruneHeld(st store.Store, retention time.Duration, now time.Time, hold uint64) (int, error) {
	if retention <= 0 {
		return 0, nil
	}
	cutoff := now.Add(-retention).UTC().Truncate(24 * time.Hour)
	future := now.Add(MaxSkew)
	// A record removed deletes up to six keys, and perhaps a checkpoint
	// and an hour's entry: half what Append may write in a commit of st.
	per := min(maxPrunePerTx, max(1, AppendsPerTx(st)/2))
	total := 0
	for {
		n, more := 0, false
		err := st.Update(func(tx store.Tx) error {
			n, more = 0, false
			head, anchor, err := Marks(tx)
			if err != nil {
				return err
			}
			var misdated []uint64 // since the last record removed
			for seq := anchor.Seq + 1; seq <= min(head.Seq, hold) && n < per; seq++ {
				e, err := readRecord(tx, seq)
				if err != nil {
					return err
				}
				if e.Time.After(future) {
					misdated = append(misdated, seq)
					continue
				}
				if !e.Time.Before(cutoff) {
					break
				}
				// seq goes, and the misdated run before it with it. A
				// run longer than what is left of this commit waits
				// for the next one; one longer than a whole commit
				// goes in parts, the anchor on the last misdated
				// record removed, and the next commit finds seq again.
				run := append(misdated, seq)
				if len(run) > per-n {
					more = true
					if n > 0 {
						break
					}
					run = run[:per]
				}
				for _, m := range run {
					me := e
					if m != seq {
						if me, err = readRecord(tx, m); err != nil {
							return err
						}
					}
					if err := unindex(tx, &me); err != nil {
						return err
					}
					if err := tx.Delete(store.Audit, Key(m)); err != nil {
						return err
					}
					n++
					anchor = Mark{Seq: m, Hash: me.Hash, Time: me.Time}
				}
				if anchor.Seq != seq {
					break
				}
				misdated = misdated[:0]
			}
			if n == 0 {
				return nil
			}
			if err := pruneHours(tx, anchor.Seq); err != nil {
				return err
			}
			return store.Put(tx, store.Meta, MetaAnchor, anchor)
		})
		total += n
		if err != nil {
			return total, err
		}
		if n < per && !more {
			return total, pruneCheckpoints(st)
		}
	}
}

// pruneCheckpoints removes the checkpoints of records before the
// anchor, in commits of as many deletions as st takes (there may be more
// than one commit of st takes: one checkpoint per record pruned, or more
// left by an earlier run that stopped between its commits, which this
// one finishes). The checkpoint of the anchor itself stays, and verifies
// against it.
func pruneCheckpoints(st store.Store) error {
	per := maxPrunePerTx
	if n := store.MaxWrites(st); n > 0 {
		per = max(1, n-1) // and the bucket's version key
	}
	for {
		n := 0
		err := st.Update(func(tx store.Tx) error {
			_, anchor, err := Marks(tx)
			if err != nil {
				return err
			}
			var old []string
			err = tx.Scan(store.AuditCheckpoints, "", Key(anchor.Seq), false, func(k string, _ []byte) error {
				old = append(old, k)
				if len(old) == per {
					return store.StopScan
				}
				return nil
			})
			if err != nil {
				return err
			}
			n = len(old)
			return deleteKeys(tx, store.AuditCheckpoints, old)
		})
		if err != nil {
			return fmt.Errorf("prune audit checkpoints: %w", err)
		}
		if n < per {
			return nil
		}
	}
}
