package proto

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
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
	Correlation string            `json:"correlation,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`

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
	e.Hash = ""
	b, err := json.Marshal(e)
	if err != nil { // only unencodable values fail; AuditEvent has none
		panic(fmt.Sprintf("encode audit event: %v", err))
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
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
	AuditParamSearch   = "q"        // free text: path, object, actor, metadata
	AuditParamCursor   = "cursor"
	AuditParamLimit    = "limit"
	AuditParamOrder    = "order" // desc (default, newest first) or asc
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
}
