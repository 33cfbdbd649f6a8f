package proto

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// AuditEvent is one entry of the audit log: a security-relevant action
// with a stable code (see AuditCodes), who did it, where, to what, and how
// it ended.
//
// The coordinator numbers the events it stores (Seq) and chains them: each
// stored event carries the SHA-256 of the event before it (PrevHash) and
// its own (Hash, see AuditHash). Events an agent sends carry no Seq and no
// chain; they carry the agent spool's Source and its SourceSeq, which make
// them idempotent: however often a batch is resent, each event is stored
// once.
//
// A field added later must be omitempty, so that the records stored before
// it encode, and hash, as they did (TestAuditHashStable).
type AuditEvent struct {
	// Seq is the coordinator's sequence number, from 1, without gaps
	// except where retention pruned.
	Seq      uint64        `json:"seq,omitempty"`
	Code     AuditCode     `json:"code"`
	Category AuditCategory `json:"category"`
	Time     time.Time     `json:"time"`
	// Actor is who acted: a user's login, "device:<id>", "agent:<cluster>"
	// or "system".
	Actor   string `json:"actor"`
	Cluster string `json:"cluster,omitempty"`
	// Object names what an administrative event acted on (an id or name).
	Object   string         `json:"object,omitempty"`
	Resource *AuditResource `json:"resource,omitempty"`
	Outcome  AuditOutcome   `json:"outcome"`
	// Status is the HTTP status a proxied request was answered with.
	Status int `json:"status,omitempty"`
	// Bytes is the size of the response body sent to the client.
	Bytes   int64    `json:"bytes,omitempty"`
	Latency Duration `json:"latency,omitempty"`
	// Error is the clustral error code of a refusal or failure.
	Error ErrorCode `json:"error,omitempty"`
	// Correlation ties related events together, e.g. the start and end of
	// an exec stream (the X-Clustral-Request-Id of the request).
	Correlation string `json:"correlation,omitempty"`
	// TraceID is the W3C trace id (32 lowercase hex digits) a proxied
	// request went to the apiserver with: the client's, or one the agent
	// started. The apiserver's spans of the request carry it, or link
	// it (see docs/design.md, "Trace context").
	TraceID  string            `json:"trace_id,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`

	// Source and SourceSeq identify an event from an agent's spool.
	Source    string `json:"source,omitempty"`
	SourceSeq uint64 `json:"source_seq,omitempty"`

	PrevHash string `json:"prev_hash,omitempty"`
	Hash     string `json:"hash,omitempty"`
}

// AuditResource is what a proxied Kubernetes request addressed.
type AuditResource struct {
	Verb        string `json:"verb,omitempty"`
	APIGroup    string `json:"api_group,omitempty"`
	Resource    string `json:"resource,omitempty"`
	Subresource string `json:"subresource,omitempty"`
	Namespace   string `json:"namespace,omitempty"`
	Name        string `json:"name,omitempty"`
	Path        string `json:"path,omitempty"`
}

// String is a compact form for tables: verb group/resource/sub ns/name.
func (r *AuditResource) String() string {
	if r == nil {
		return ""
	}
	res := r.Resource
	if r.APIGroup != "" {
		res = r.APIGroup + "/" + res
	}
	if r.Subresource != "" {
		res += "/" + r.Subresource
	}
	obj := r.Name
	if r.Namespace != "" {
		obj = r.Namespace + "/" + obj
	}
	if res == "" {
		res = r.Path
	}
	out := r.Verb
	for _, p := range []string{res, obj} {
		if p != "" && p != "/" {
			out += " " + p
		}
	}
	return out
}

// AuditOutcome is how an audited action ended.
type AuditOutcome string

const (
	OutcomeSuccess AuditOutcome = "success"
	OutcomeFailure AuditOutcome = "failure"
	OutcomeDenied  AuditOutcome = "denied"
)

// AuditHash returns the hash that chains e: the lowercase hex SHA-256 of
// the canonical JSON of e (encoding/json of the struct, fields in
// declaration order, map keys sorted) with Hash empty. PrevHash is part
// of what is hashed, which links each record to the one before.
func AuditHash(e AuditEvent) string {
	h, _ := hashedAudit(e)
	return h
}

// hashedAudit returns AuditHash(e) and the JSON it hashed.
func hashedAudit(e AuditEvent) (string, []byte) {
	e.Hash = ""
	b, err := json.Marshal(e)
	if err != nil { // only unencodable values fail; AuditEvent has none
		panic(fmt.Sprintf("encode audit event: %v", err))
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:]), b
}

// SealAudit returns e with its Hash set (AuditHash) and the JSON encoding
// of that, the record as the audit chain stores it, from one encoding of
// e: Hash is AuditEvent's last field, so the record is the hashed JSON
// with `,"hash":"<hash>"` before its closing brace.
func SealAudit(e AuditEvent) (AuditEvent, []byte) {
	h, b := hashedAudit(e)
	e.Hash = h
	const field = `,"hash":""`
	raw := make([]byte, 0, len(b)+len(field)+len(h))
	raw = append(raw, b[:len(b)-1]...)
	raw = append(raw, `,"hash":"`...)
	raw = append(raw, h...)
	raw = append(raw, `"}`...)
	return e, raw
}

// AuditBatch is the body of POST /api/v1/audit/events: an agent's spooled
// events in spool order, authenticated with the agent's node token.
type AuditBatch struct {
	// Source is the agent spool's stable random id; it survives restarts
	// of the agent that reuse the spool directory.
	Source string       `json:"source"`
	Events []AuditEvent `json:"events"`
}

// MaxAuditBatch bounds the events in one AuditBatch.
const MaxAuditBatch = 1000

// AuditAck answers an AuditBatch: every event of Source up to and
// including Acked is stored; the agent may forget them.
type AuditAck struct {
	Acked      uint64 `json:"acked"`
	Stored     int    `json:"stored"`
	Duplicates int    `json:"duplicates"`
}

// AuditPage is one page of GET /api/v1/audit/events. Next, when not
// empty, is the opaque cursor of the following page (pass it as cursor).
// With order=asc an empty page still returns a Next to poll with.
// Follow, on a first newest-first page, is the cursor of the events that
// come after the page was read: poll it to follow the log.
type AuditPage struct {
	Events []AuditEvent `json:"events"`
	Next   string       `json:"next,omitempty"`
	Follow string       `json:"follow,omitempty"`
}

// Query parameters of GET /api/v1/audit/events.
const (
	AuditParamCategory = "category"
	AuditParamCode     = "code"
	AuditParamSeverity = "severity" // I, W or E (or info, warning, error)
	AuditParamUser     = "user"     // the actor
	AuditParamCluster  = "cluster"
	AuditParamResource = "resource" // resource name, e.g. pods or apps/deployments
	AuditParamFrom     = "from"     // RFC 3339, inclusive
	AuditParamTo       = "to"       // RFC 3339, exclusive
	AuditParamSearch   = "q"        // free text: path, object, actor, metadata, correlation or trace id
	// AuditParamCorrelation selects the events of one request or stream
	// by its correlation id, exactly (an exec session's is its id).
	AuditParamCorrelation = "correlation"
	AuditParamCursor      = "cursor"
	AuditParamLimit       = "limit"
	AuditParamOrder       = "order" // desc (default, newest first) or asc
)

// AuditVerification is the answer of GET /api/v1/audit/verify: the result
// of checking the hash chain from the retention anchor to the head.
type AuditVerification struct {
	OK bool `json:"ok"`
	// Checked counts the records checked; First and Last are their
	// sequence numbers.
	Checked int    `json:"checked"`
	First   uint64 `json:"first,omitempty"`
	Last    uint64 `json:"last,omitempty"`
	// Anchor is the hash of the last record retention pruned (the
	// PrevHash the first remaining record must carry), empty if none.
	Anchor string `json:"anchor,omitempty"`
	// BadSeq is the sequence number of the first record that fails, and
	// Problem says how.
	BadSeq  uint64 `json:"bad_seq,omitempty"`
	Problem string `json:"problem,omitempty"`

	// Checkpoints counts the signed checkpoints found in the store and
	// checked; SignedSeq and SignedAt are the record and time of the
	// newest. Key is the fingerprint (AuditCheckpoint.KeyID) of the key
	// every checkpoint had to be signed with.
	Checkpoints int       `json:"checkpoints,omitempty"`
	SignedSeq   uint64    `json:"signed_seq,omitempty"`
	SignedAt    time.Time `json:"signed_at,omitzero"`
	Key         string    `json:"key,omitempty"`
	// Against is the exported checkpoint the log was checked against, if
	// one was given; OK then also means the log still holds its record
	// with its hash (the log extends it).
	Against *AuditCheckpoint `json:"against,omitempty"`
	// Recordings counts the stored session recordings checked against
	// the digest in their session's end event. BadRecording names the
	// first that does not match it (BadSeq is then its end event, and the
	// chain itself is intact).
	Recordings   int    `json:"recordings,omitempty"`
	BadRecording string `json:"bad_recording,omitempty"`
	// Unvouched counts the stored recordings that no end event in the
	// log vouches for, so the verification says nothing of their
	// content: their session's end event has not reached the coordinator
	// yet (agents ship events in batches, and after an outage from their
	// spool), or it was pruned with the older records. UnvouchedIDs names
	// at most MaxUnvouchedIDs of them, in order.
	Unvouched    int      `json:"unvouched,omitempty"`
	UnvouchedIDs []string `json:"unvouched_ids,omitempty"`
}

// MaxUnvouchedIDs bounds AuditVerification.UnvouchedIDs.
const MaxUnvouchedIDs = 20

// AuditVerifyRequest is the body of POST /api/v1/audit/verify: verify the
// log, and that it still extends Checkpoint.
type AuditVerifyRequest struct {
	Checkpoint *AuditCheckpoint `json:"checkpoint"`
}

// AuditCheckpoint is the coordinator's signed statement that its audit
// log held record Seq, with hash Hash, at Time. The coordinator signs one
// periodically, when it stops, and on request (clustral audit
// checkpoint); exported and kept outside the coordinator, it lets a later
// verification prove that the log still extends it: neither cut back
// below Seq nor rewritten up to it.
//
// The signature is Ed25519 over SignedBytes, by the key whose public half
// is PublicKey.
type AuditCheckpoint struct {
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	Time time.Time `json:"time"`
	// PublicKey is the signer's Ed25519 public key, standard base64.
	PublicKey string `json:"public_key"`
	// Signature is the Ed25519 signature of SignedBytes, standard base64.
	Signature string `json:"signature"`
}

// auditCheckpointDomain separates checkpoint signatures from anything
// else the key could ever sign.
const auditCheckpointDomain = "clustral audit checkpoint v1\n"

// SignedBytes returns what the signature covers: a fixed text with the
// sequence, the hash and the time (UTC, RFC 3339 with nanoseconds).
func (c *AuditCheckpoint) SignedBytes() []byte {
	return fmt.Appendf(nil, "%sseq %d\nhash %s\ntime %s\n", auditCheckpointDomain, c.Seq, c.Hash, c.Time.UTC().Format(time.RFC3339Nano))
}

// SignAuditCheckpoint returns the checkpoint of record seq with hash, at
// t, signed with key.
func SignAuditCheckpoint(key ed25519.PrivateKey, seq uint64, hash string, t time.Time) AuditCheckpoint {
	c := AuditCheckpoint{Seq: seq, Hash: hash, Time: t.UTC(),
		PublicKey: base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))}
	c.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(key, c.SignedBytes()))
	return c
}

// Key returns the checkpoint's public key, or an error naming what is
// wrong with it.
func (c *AuditCheckpoint) Key() (ed25519.PublicKey, error) {
	k, err := base64.StdEncoding.DecodeString(c.PublicKey)
	if err != nil || len(k) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public_key is not a base64 Ed25519 public key (%d bytes)", ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(k), nil
}

// KeyID returns the fingerprint of the checkpoint's public key
// ("sha256:" and 16 hex digits), or "" if it has none.
func (c *AuditCheckpoint) KeyID() string {
	k, err := c.Key()
	if err != nil {
		return ""
	}
	return AuditKeyID(k)
}

// AuditKeyID is the fingerprint of a checkpoint public key: "sha256:"
// and the first 16 hex digits of the SHA-256 of the key.
func AuditKeyID(k ed25519.PublicKey) string {
	h := sha256.Sum256(k)
	return "sha256:" + hex.EncodeToString(h[:8])
}

// Verify checks that the checkpoint is well formed and that its
// signature is valid for its own public key. Whether that key is the
// coordinator's is the caller's question.
func (c *AuditCheckpoint) Verify() error {
	if c.Seq == 0 {
		return errors.New("seq is missing: a checkpoint names a record, from 1")
	}
	if h, err := hex.DecodeString(c.Hash); err != nil || len(h) != sha256.Size || hex.EncodeToString(h) != c.Hash {
		return errors.New("hash is not 64 lowercase hex digits")
	}
	if c.Time.IsZero() {
		return errors.New("time is missing")
	}
	k, err := c.Key()
	if err != nil {
		return err
	}
	sig, err := base64.StdEncoding.DecodeString(c.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("signature is not a base64 Ed25519 signature (%d bytes)", ed25519.SignatureSize)
	}
	if !ed25519.Verify(k, c.SignedBytes(), sig) {
		return errors.New("the signature does not match the checkpoint: it was edited, or forged")
	}
	return nil
}

// MaxAuditCheckpointBytes bounds an exported checkpoint document.
const MaxAuditCheckpointBytes = 4096

// ParseAuditCheckpoint reads an exported checkpoint: one JSON object with
// the fields of AuditCheckpoint and nothing else, whose signature
// verifies.
func ParseAuditCheckpoint(b []byte) (AuditCheckpoint, error) {
	var c AuditCheckpoint
	if len(b) > MaxAuditCheckpointBytes {
		return c, fmt.Errorf("checkpoint is %d bytes, over %d: not a checkpoint written by clustral audit checkpoint", len(b), MaxAuditCheckpointBytes)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&c); err != nil {
		return c, fmt.Errorf("checkpoint is not a JSON checkpoint document: %w", err)
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return c, errors.New("checkpoint has data after its JSON object: give one checkpoint per file")
	}
	if err := c.Verify(); err != nil {
		return c, fmt.Errorf("checkpoint: %w", err)
	}
	return c, nil
}
