// Package store is the coordinator's persistent state: a small transactional
// key-value interface with two implementations, bbolt (Bolt, the default:
// one file on a small VM) and etcd (Etcd, for a coordinator that outgrows
// one machine). Everything the coordinator persists goes through Store;
// package storetest holds the conformance suite both pass.
//
// Values are JSON documents; keys are strings within named buckets. A write
// transaction is atomic and durable once Update returns nil: a crash at any
// point loses no acknowledged write.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Bucket names the collections the coordinator keeps.
type Bucket string

// The buckets. Every bucket exists in every store.
const (
	Meta        Bucket = "meta"        // singletons: keys, CA, settings
	Users       Bucket = "users"       // user id → user
	Sessions    Bucket = "sessions"    // sha256(session id) → session
	Nodes       Bucket = "nodes"       // node id → node (devices and agents)
	Clusters    Bucket = "clusters"    // cluster id → cluster
	Roles       Bucket = "roles"       // role id → role
	Assignments Bucket = "assignments" // assignment id → assignment
	Addresses   Bucket = "addresses"   // overlay address → node id
	Changes     Bucket = "changes"     // sequence → administrative change record
	Requests    Bucket = "requests"    // request id → access request, pending or approved
	// RequestArchive holds ended access requests (denied, revoked,
	// expired), out of the way of the live ones.
	RequestArchive Bucket = "requests_archive" // archive key (newest first) → access request
	// RequestArchiveIDs: request id → its key in RequestArchive.
	RequestArchiveIDs Bucket = "requests_archive_ids"
	Audit             Bucket = "audit"     // zero-padded sequence → chained audit event
	AuditSource       Bucket = "audit_src" // cluster id/agent spool id → highest stored spool sequence
	// AuditCheckpoints: zero-padded sequence → signed checkpoint of that record.
	AuditCheckpoints Bucket = "audit_ckpt"
	// AuditIndex: the audit log's indexes (by user, cluster, code,
	// category and hour), kept by package auditlog.
	AuditIndex Bucket = "audit_idx"
	// Logins: sha256(poll handle) → a login waiting for its browser, kept
	// only by coordinators that share their store, so that any replica
	// can take each step of it.
	Logins Bucket = "logins"
	// Live: agent node id → the agent's last status report and the live
	// sessions administrators ended, kept only by coordinators that share
	// their store, so that every replica lists every agent's sessions
	// and the one holding an agent's map stream carries the end.
	Live Bucket = "live"
	// Recordings and RecordingChunks hold the session recordings of
	// coordinators that share their store (coordinator/recordings.Shared):
	// session id → what is stored, and "<session id>/<chunk index>" →
	// that chunk's bytes.
	Recordings      Bucket = "recordings"
	RecordingChunks Bucket = "recording_chunks"
	// RecordingLive: session id → what a shared store holds of that
	// running session's live part, whose chunks are in RecordingChunks
	// under "<session id>/live/<offset>" (coordinator/recordings.Shared).
	RecordingLive Bucket = "recording_live"
)

// AllBuckets lists every bucket.
var AllBuckets = []Bucket{Meta, Users, Sessions, Nodes, Clusters, Roles, Assignments, Addresses, Changes, Requests, RequestArchive, RequestArchiveIDs, Audit, AuditSource, AuditCheckpoints, AuditIndex, Logins, Live, Recordings, RecordingChunks, RecordingLive}

// addedBuckets are buckets a store (or backup) written by an earlier
// version may lack; Verify and Restore take their absence as empty.
var addedBuckets = []Bucket{Logins, AuditIndex, RequestArchiveIDs, Live, Recordings, RecordingChunks, RecordingLive}

// ErrNotFound is returned by Get when a key is absent.
var ErrNotFound = errors.New("not found")

// Store is a transactional key-value store. Implementations are safe for
// concurrent use. Close releases the backing resources; the Store must not
// be used afterwards.
type Store interface {
	// View runs fn in a read-only transaction.
	View(fn func(Tx) error) error
	// Update runs fn in a read-write transaction. If fn returns an error
	// nothing it wrote is kept. When Update returns nil, the writes are
	// durable. Transactions are serializable: the outcome is as if every
	// Update ran alone, one after another.
	//
	// fn may run more than once: a backend with optimistic concurrency
	// (Etcd) reruns it when a concurrent writer changed what it read. So
	// fn must have no effect besides its calls on the Tx (no sends, no
	// changes to memory outside it that a rerun would repeat or a failed
	// attempt would leave behind), and must derive what it writes only
	// from what the Tx returns and from values fixed before Update.
	Update(fn func(Tx) error) error
	// Backup writes a consistent snapshot of the whole store to path.
	Backup(path string) error
	// BackupTo writes a consistent snapshot of the whole store to w, in
	// the store's own file format, and returns how many bytes it wrote.
	// Writes continue meanwhile; the snapshot is of one moment.
	BackupTo(w io.Writer) (int64, error)
	Close() error
}

// Tx is a transaction. It must not be used after the function it was
// passed to returns.
type Tx interface {
	// GetRaw returns the value at key, or ErrNotFound. The returned slice is
	// owned by the caller.
	GetRaw(b Bucket, key string) ([]byte, error)
	// PutRaw stores value at key. Read-only transactions return an error.
	PutRaw(b Bucket, key string, value []byte) error
	// Delete removes key; deleting an absent key is not an error.
	Delete(b Bucket, key string) error
	// ForEach calls fn for every key in b in key order. The value slice is
	// only valid during the call. Returning an error stops the iteration.
	ForEach(b Bucket, fn func(key string, value []byte) error) error
	// Scan calls fn for every key of b in [from, to), in key order, or
	// in reverse key order when reverse is set; an empty to means the
	// end of b. The value slice is only valid during the call. If fn
	// returns StopScan, the scan ends and Scan returns nil; any other
	// error ends it and is returned. Unlike ForEach it reads only the
	// range, so a lookup in a large bucket costs what it returns.
	Scan(b Bucket, from, to string, reverse bool, fn func(key string, value []byte) error) error
	// NextSequence returns a monotonically increasing number for b.
	NextSequence(b Bucket) (uint64, error)
}

// MaxWrites returns how many keys one Update of st may write, 0 when st
// sets no bound (an Etcd's is etcd's --max-txn-ops, counting the
// bookkeeping keys of its commit).
func MaxWrites(st Store) int {
	if l, ok := st.(interface{ MaxWrites() int }); ok {
		return l.MaxWrites()
	}
	return 0
}

// StopScan, returned by the function Tx.Scan calls, ends the scan
// without an error.
var StopScan = errors.New("stop scan")

// scanned is what Scan returns when fn returned err.
func scanned(err error) error {
	if errors.Is(err, StopScan) {
		return nil
	}
	return err
}

// inRange reports whether key lies in [from, to), an empty to meaning
// no upper bound.
func inRange(key, from, to string) bool {
	return key >= from && (to == "" || key < to)
}

// Get decodes the JSON value at key into v.
func Get(tx Tx, b Bucket, key string, v any) error {
	raw, err := tx.GetRaw(b, key)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("decode %s/%s: %w", b, key, err)
	}
	return nil
}

// Put encodes v as JSON and stores it at key.
func Put(tx Tx, b Bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s/%s: %w", b, key, err)
	}
	return tx.PutRaw(b, key, raw)
}

// List decodes every value of b, in key order, as a T.
func List[T any](tx Tx, b Bucket) ([]T, error) {
	var out []T
	err := tx.ForEach(b, func(key string, raw []byte) error {
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("decode %s/%s: %w", b, key, err)
		}
		out = append(out, v)
		return nil
	})
	return out, err
}
