// Package auditlog is the coordinator's audit chain in its store: append,
// query, verify, prune, and the signed checkpoints that anchor it outside
// the store. It needs only a store.Store or a store.Tx; the coordinator
// decides what is recorded and when.
//
// The log is append-only in the store's Audit bucket, keyed by the
// zero-padded sequence number (Key). Each record carries the hash of the
// one before it (proto.AuditHash), so an edit or a deletion breaks the
// chain at the record it touched. The head (last sequence and hash) is
// kept in Meta under MetaHead, which catches records removed from the
// end. Retention (Prune) removes whole UTC days from the front and keeps
// the last removed record's hash as the anchor (MetaAnchor) the first
// remaining record must follow.
//
// An event describing a change is appended in the same store transaction
// as the change (Append takes the caller's store.Tx), so the change and
// its record commit together.
//
// Checkpoints anchor the chain outside the store. The chain alone catches
// an edit, but its head is in the same file as the records, so whoever
// can write that file can cut off its tail, or rewrite and rehash every
// record, and the chain still verifies. A checkpoint is the coordinator's
// Ed25519 signature over (sequence, hash, time) of the chain's head
// (proto.AuditCheckpoint), kept in the AuditCheckpoints bucket
// (SignCheckpoint); an administrator exports one to keep outside the
// coordinator. The signing key is not in the store: it is the file
// KeyFile in the data directory (PKCS#8 PEM, mode 0600, LoadKey). A
// rewrite of the store, or of a copy of it, cannot re-sign the
// checkpoints without it; one made by someone who could also read the key
// is caught by an exported checkpoint, which pins the key and the hash of
// its record (Verify with VerifyOptions.Against).
//
// The functions are safe for concurrent use as far as the store's
// transactions are; the caller serializes whatever must not interleave
// (the coordinator signs checkpoints under its own lock).
package auditlog
