package auditlog

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// The audit log's indexes, in the store's AuditIndex bucket, written by
// Append in the transaction that stores the record and removed by Prune
// in the one that removes it, so they cannot drift from the log:
//
//   - u/<actor>/<Key(seq)>, c/<cluster>/<Key(seq)>, k/<code>/<Key(seq)>,
//     g/<category>/<Key(seq)> and x/<correlation>/<Key(seq)>: one entry
//     per record and dimension (none for an empty cluster, category or
//     correlation), whose value is the
//     record's time (indexTime). The actor is case-folded (foldKey), as
//     Filter.User matches it; every name is path-escaped, so it holds no
//     "/". A dimension's records, in sequence order, are one key range.
//   - h/<hour>: the lowest and highest sequence of the records dated in
//     that UTC hour (2006010215), which bound the records of a time range.
//
// A log written before the indexes existed is indexed by BuildIndex;
// until it finishes, Query scans (MetaIndex says how far it got).

// MetaIndex is the Meta key of the index's state, an indexState.
const MetaIndex = "audit_index"

// indexState is how much of the log the index covers: every record
// after Pending. Pending 0 means all of it.
type indexState struct {
	Pending uint64 `json:"pending"`
}

// Index dimensions: the first segment of an entry's key.
const (
	dimUser        = "u"
	dimCluster     = "c"
	dimCode        = "k"
	dimCategory    = "g"
	dimCorrelation = "x"
	dimHour        = "h"
)

const hourLayout = "2006010215"

// foldKey maps s to one representative of the strings strings.EqualFold
// takes as equal to it: each rune becomes the lower case of the smallest
// rune of its simple case-folding orbit ("Alice" is "alice"). Should two
// orbits share one, the index holds a few extra candidates, which Query
// drops by matching the records.
func foldKey(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			m = min(m, f)
		}
		b.WriteRune(unicode.ToLower(m))
	}
	return b.String()
}

// dimPrefix is the key prefix of the entries of one value of a dimension.
func dimPrefix(dim, value string) string {
	if dim == dimUser {
		value = foldKey(value)
	}
	return dim + "/" + url.PathEscape(value) + "/"
}

// indexEntries returns the prefixes under which e is indexed.
func indexEntries(e *proto.AuditEvent) []string {
	out := []string{dimPrefix(dimUser, e.Actor), dimPrefix(dimCode, string(e.Code))}
	if e.Cluster != "" {
		out = append(out, dimPrefix(dimCluster, e.Cluster))
	}
	if e.Category != "" {
		out = append(out, dimPrefix(dimCategory, string(e.Category)))
	}
	if e.Correlation != "" {
		out = append(out, dimPrefix(dimCorrelation, e.Correlation))
	}
	return out
}

// indexTime encodes t for an index entry: Unix seconds and nanoseconds,
// exact for every time a record can hold.
func indexTime(t time.Time) []byte {
	return fmt.Appendf(nil, "%d.%d", t.Unix(), t.Nanosecond())
}

func parseIndexTime(v []byte) (time.Time, bool) {
	s, ns, ok := strings.Cut(string(v), ".")
	if !ok {
		return time.Time{}, false
	}
	sec, err1 := strconv.ParseInt(s, 10, 64)
	nsec, err2 := strconv.ParseInt(ns, 10, 64)
	if err1 != nil || err2 != nil {
		return time.Time{}, false
	}
	return time.Unix(sec, nsec).UTC(), true
}

func hourKey(t time.Time) string { return dimHour + "/" + t.UTC().Format(hourLayout) }

// hourSpan is the value of an h/ entry.
type hourSpan struct{ lo, hi uint64 }

func parseHourSpan(v []byte) (hourSpan, error) {
	a, b, ok := strings.Cut(string(v), " ")
	lo, err1 := strconv.ParseUint(a, 10, 64)
	hi, err2 := strconv.ParseUint(b, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return hourSpan{}, fmt.Errorf("audit index: hour entry %q is not two sequences", v)
	}
	return hourSpan{lo, hi}, nil
}

func (h hourSpan) encode() []byte { return fmt.Appendf(nil, "%d %d", h.lo, h.hi) }

// index writes e's entries in tx.
func index(tx store.Tx, e *proto.AuditEvent) error {
	k, t := Key(e.Seq), indexTime(e.Time)
	for _, p := range indexEntries(e) {
		if err := tx.PutRaw(store.AuditIndex, p+k, t); err != nil {
			return err
		}
	}
	hk := hourKey(e.Time)
	span := hourSpan{e.Seq, e.Seq}
	raw, err := tx.GetRaw(store.AuditIndex, hk)
	switch {
	case err == nil:
		old, err := parseHourSpan(raw)
		if err != nil {
			return err
		}
		span = hourSpan{min(old.lo, e.Seq), max(old.hi, e.Seq)}
		if span == old {
			return nil
		}
	case !errors.Is(err, store.ErrNotFound):
		return err
	}
	return tx.PutRaw(store.AuditIndex, hk, span.encode())
}

// unindex removes e's entries from tx. Its hour entry stays until Prune
// has removed every record it spans (pruneHours).
func unindex(tx store.Tx, e *proto.AuditEvent) error {
	k := Key(e.Seq)
	for _, p := range indexEntries(e) {
		if err := tx.Delete(store.AuditIndex, p+k); err != nil {
			return err
		}
	}
	return nil
}

// pruneHours removes the hour entries of hours whose records are all at
// or before the anchor.
func pruneHours(tx store.Tx, anchor uint64) error {
	var old []string
	err := tx.Scan(store.AuditIndex, dimHour+"/", dimHour+"0", false, func(k string, v []byte) error {
		span, err := parseHourSpan(v)
		if err != nil {
			return err
		}
		if span.hi <= anchor {
			old = append(old, k)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return deleteKeys(tx, store.AuditIndex, old)
}

// deleteKeys deletes keys from bucket b in tx.
func deleteKeys(tx store.Tx, b store.Bucket, keys []string) error {
	for _, k := range keys {
		if err := tx.Delete(b, k); err != nil {
			return err
		}
	}
	return nil
}

// indexPending returns the highest record the index may lack, 0 when it
// covers the whole log, and whether the index was ever started.
func indexPending(tx store.Tx) (pending uint64, started bool, err error) {
	var st indexState
	if err := store.Get(tx, store.Meta, MetaIndex, &st); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return 0, false, nil
		}
		return 0, false, err
	}
	return st.Pending, true, nil
}

// indexComplete reports whether the index covers every record of the log.
func indexComplete(tx store.Tx) (bool, error) {
	p, started, err := indexPending(tx)
	return started && p == 0, err
}

// How many keys Append writes: per record (the record, five index
// entries, its hour), and once per transaction (the head, the index
// state, and a backend's bookkeeping: a sequence counter and a version
// key per bucket written).
const (
	appendWrites      = 7
	appendFixedWrites = 6
)

// AppendsPerTx returns how many records Append may store in one
// transaction of st that writes nothing else, at least 1.
func AppendsPerTx(st store.Store) int {
	n := store.MaxWrites(st)
	if n == 0 {
		return math.MaxInt
	}
	return max(1, (n-appendFixedWrites)/appendWrites)
}

// BuildIndex indexes the records of st stored before the index existed,
// newest first, batch records a transaction, and returns how many it
// indexed. Records appended meanwhile are indexed by Append. It picks up
// where an interrupted run stopped, and is safe to run on several
// replicas at once (they write the same entries); until it is done Query
// scans. progress, if not nil, is called after each batch. It stops,
// returning ctx's error, when ctx ends; the next run goes on from there.
func BuildIndex(ctx context.Context, st store.Store, batch int, progress func(done, total uint64)) (uint64, error) {
	var total, done uint64
	for {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		var pending, n uint64
		err := st.Update(func(tx store.Tx) error {
			p, started, err := indexPending(tx)
			if err != nil {
				return err
			}
			head, anchor, err := Marks(tx)
			if err != nil {
				return err
			}
			if !started {
				p = head.Seq // Append indexes everything after it from now on
			}
			if total == 0 && p > anchor.Seq {
				total = p - anchor.Seq
			}
			for n = 0; p > anchor.Seq && n < uint64(batch); p, n = p-1, n+1 {
				e, err := readRecord(tx, p)
				if errors.Is(err, store.ErrNotFound) {
					continue // removed: Verify names the gap
				}
				if err != nil {
					return fmt.Errorf("index: %w", err)
				}
				if err := index(tx, &e); err != nil {
					return err
				}
			}
			if p <= anchor.Seq {
				p = 0
			}
			pending = p
			return store.Put(tx, store.Meta, MetaIndex, indexState{Pending: p})
		})
		if err != nil {
			return done, fmt.Errorf("build the audit index: %w", err)
		}
		done += n
		if progress != nil && total > 0 {
			progress(min(done, total), total)
		}
		if pending == 0 {
			return done, nil
		}
	}
}
