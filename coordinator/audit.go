package coordinator

import (
	"cmp"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// The audit log is append-only in the store's Audit bucket, keyed by the
// zero-padded sequence number. Each record carries the hash of the one
// before it (proto.AuditHash), so an edit or a deletion breaks the chain at
// the record it touched. The head (last sequence and hash) is kept in Meta,
// which catches records removed from the end. Retention removes whole UTC
// days from the front and keeps the last removed record's hash as the
// anchor the first remaining record must follow.
//
// An event describing a change is appended in the same store transaction as
// the change (recordChange), so the change and its record commit together.

const (
	metaAuditHead   = "audit_head"
	metaAuditAnchor = "audit_anchor"
)

// DefaultAuditRetention is how long the coordinator keeps audit events.
const DefaultAuditRetention = 90 * 24 * time.Hour

// auditMark names one record of the chain by sequence and hash.
type auditMark struct {
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	Time time.Time `json:"time,omitzero"`
}

func auditKey(seq uint64) string { return fmt.Sprintf("%020d", seq) }

func getMark(tx store.Tx, key string) (auditMark, error) {
	var m auditMark
	if err := store.Get(tx, store.Meta, key, &m); err != nil && !errors.Is(err, store.ErrNotFound) {
		return m, err
	}
	return m, nil
}

// getMarks reads the head and the retention anchor of the audit log in
// tx; either is zero while it has not been stored.
func getMarks(tx store.Tx) (head, anchor auditMark, err error) {
	if head, err = getMark(tx, metaAuditHead); err != nil {
		return head, anchor, err
	}
	anchor, err = getMark(tx, metaAuditAnchor)
	return head, anchor, err
}

// appendAudit numbers e, chains it to the head and stores it in tx. It
// fills Category from the catalogue when it is empty.
func appendAudit(tx store.Tx, e proto.AuditEvent) (proto.AuditEvent, error) {
	head, err := getMark(tx, metaAuditHead)
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
	e.Hash = proto.AuditHash(e)
	raw, err := json.Marshal(e)
	if err != nil {
		return e, fmt.Errorf("encode audit event %d: %w", seq, err)
	}
	if err := tx.PutRaw(store.Audit, auditKey(seq), raw); err != nil {
		return e, err
	}
	return e, store.Put(tx, store.Meta, metaAuditHead, auditMark{Seq: seq, Hash: e.Hash})
}

// auditQueue holds events that go with no change of state (failures,
// streams opening and closing) until the audit writer stores them, many
// in one transaction, so that a storm of connections costs a few commits
// and no request waits for one.
type auditQueue struct {
	mu      sync.Mutex
	pending []proto.AuditEvent
	wake    chan struct{}
	// lost counts the events refused while the queue was full, between
	// lostFirst and lostLast; the writer stores them as one
	// AuditEventsLost event as soon as it can, so a loss is never silent.
	lost                uint64
	lostFirst, lostLast time.Time
	// flushed are closed once everything queued before them is stored.
	flushed []chan struct{}
	// limit, when not zero, replaces maxAuditQueue (tests).
	limit int
}

// maxAuditQueue bounds the events waiting for the writer; beyond it events
// are counted as lost (the store is not keeping up) and the count is
// stored as an AuditEventsLost event.
const maxAuditQueue = 100_000

// audit queues e for the audit writer.
func (s *Server) audit(e proto.AuditEvent) {
	if e.Time.IsZero() {
		e.Time = s.now()
	}
	q := &s.auditq
	q.mu.Lock()
	if q.wake == nil {
		q.wake = make(chan struct{}, 1)
	}
	if len(q.pending) >= cmp.Or(q.limit, maxAuditQueue) {
		if q.lost == 0 {
			q.lostFirst = e.Time
		}
		q.lost++
		q.lostLast = e.Time
		q.mu.Unlock()
		s.metrics.auditLost.Inc()
		s.log.Error("audit queue full: event lost (counted in an audit event)", "code", e.Code, "actor", e.Actor)
		return
	}
	q.pending = append(q.pending, e)
	wake := q.wake
	q.mu.Unlock()
	select {
	case wake <- struct{}{}:
	default:
	}
}

// flushAudit returns once every event queued before the call is stored
// (or counted as lost), or the server is closing.
func (s *Server) flushAudit() {
	done := make(chan struct{})
	q := &s.auditq
	q.mu.Lock()
	if q.wake == nil {
		q.wake = make(chan struct{}, 1)
	}
	q.flushed = append(q.flushed, done)
	wake := q.wake
	q.mu.Unlock()
	select {
	case wake <- struct{}{}:
	default:
	}
	select {
	case <-done:
	case <-s.stop:
	}
}

// auditWriter stores queued events until Close, and what is queued then.
func (s *Server) auditWriter() {
	defer s.wg.Done()
	q := &s.auditq
	q.mu.Lock()
	if q.wake == nil {
		q.wake = make(chan struct{}, 1)
	}
	wake := q.wake
	q.mu.Unlock()
	for {
		stopping := false
		select {
		case <-wake:
		case <-s.stop:
			stopping = true
		}
		q.mu.Lock()
		evs := q.pending
		q.pending = nil
		if q.lost > 0 {
			evs = append(evs, proto.AuditEvent{Code: proto.AuditEventsLost, Time: q.lostLast, Actor: "system", Outcome: proto.OutcomeFailure,
				Metadata: map[string]string{"lost": strconv.FormatUint(q.lost, 10), "first": q.lostFirst.UTC().Format(time.RFC3339Nano), "last": q.lostLast.UTC().Format(time.RFC3339Nano)}})
			q.lost = 0
		}
		flushed := q.flushed
		q.flushed = nil
		q.mu.Unlock()
		if len(evs) > 0 {
			err := s.st.Update(func(tx store.Tx) error {
				for _, e := range evs {
					if _, err := appendAudit(tx, e); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				s.log.Error("store audit events", "events", len(evs), "err", err)
				// Count them, so the next batch records the loss.
				q.mu.Lock()
				if q.lost == 0 {
					q.lostFirst = evs[0].Time
				}
				q.lost += uint64(len(evs))
				q.lostLast = evs[len(evs)-1].Time
				q.mu.Unlock()
				s.metrics.auditLost.Add(float64(len(evs)))
			}
		}
		for _, c := range flushed {
			close(c)
		}
		if stopping {
			return
		}
	}
}

// changeCodes maps the actions of recordChange to audit codes.
var changeCodes = map[string]proto.AuditCode{
	"login.browser":        proto.AuditLoginBrowser,
	"login.token":          proto.AuditLoginToken,
	"session.revoke":       proto.AuditSessionRevoked,
	"device.register":      proto.AuditDeviceRegistered,
	"device.deregister":    proto.AuditDeviceLeft,
	"device.revoke":        proto.AuditDeviceRevoked,
	"agent.register":       proto.AuditAgentRegistered,
	"agent.deregister":     proto.AuditAgentLeft,
	"cluster.create":       proto.AuditClusterCreated,
	"cluster.label":        proto.AuditClusterLabeled,
	"cluster.rotate-token": proto.AuditTokenRotated,
	"cluster.revoke-token": proto.AuditTokenRevoked,
	"cluster.delete":       proto.AuditClusterDeleted,
	"role.create":          proto.AuditRoleCreated,
	"role.update":          proto.AuditRoleUpdated,
	"role.delete":          proto.AuditRoleDeleted,
	"assignment.create":    proto.AuditAssigned,
	"assignment.delete":    proto.AuditUnassigned,
	"assignment.expired":   proto.AuditAssignExpired,
	"user.disable":         proto.AuditUserDisabled,
	"user.enable":          proto.AuditUserEnabled,
	"access.request":       proto.AuditAccessRequested,
	"access.approve":       proto.AuditAccessApproved,
	"access.deny":          proto.AuditAccessDenied,
	"access.revoke":        proto.AuditAccessRevoked,
	"access.expired":       proto.AuditAccessExpired,
}

// changeEvent builds the audit event of an administrative change. Called
// with s.mu held, like recordChange.
func (s *Server) changeEvent(actor, action, object string, detail any) (proto.AuditEvent, error) {
	code, ok := changeCodes[action]
	if !ok {
		return proto.AuditEvent{}, fmt.Errorf("audit: no code for action %q", action)
	}
	e := proto.AuditEvent{Code: code, Time: s.now(), Actor: actor, Object: object, Metadata: metadataOf(detail)}
	e.Cluster = s.clusterOfObject(actor, object, e.Metadata)
	return e, nil
}

// clusterOfObject names the cluster a change concerns, if one does.
func (s *Server) clusterOfObject(actor, object string, md map[string]string) string {
	if c, ok := strings.CutPrefix(actor, "agent:"); ok {
		return c
	}
	if c := md["cluster"]; c != "" {
		return c
	}
	id := object
	switch {
	case strings.HasPrefix(object, "req_"):
		if ar := s.requests[object]; ar != nil {
			id = ar.ClusterID
		}
	case strings.HasPrefix(object, "asg_"):
		if a := s.assignments[object]; a != nil {
			id = a.ClusterID
		}
	case strings.HasPrefix(object, "agt_"):
		if n := s.nodes[object]; n != nil {
			id = n.ClusterID
		}
	}
	if c := s.clusters[id]; c != nil {
		return c.Name
	}
	return ""
}

// metadataOf flattens a change's detail into string metadata: a map's
// values one by one (strings as they are, others as JSON), anything else
// as JSON under "detail".
func metadataOf(detail any) map[string]string {
	if detail == nil {
		return nil
	}
	str := func(v any) string {
		if s, ok := v.(string); ok {
			return s
		}
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Sprint(v)
		}
		return string(b)
	}
	switch d := detail.(type) {
	case map[string]any:
		md := make(map[string]string, len(d))
		for k, v := range d {
			md[k] = str(v)
		}
		return md
	case map[string]string:
		md := make(map[string]string, len(d))
		for k, v := range d {
			md[k] = v
		}
		return md
	}
	return map[string]string{"detail": str(detail)}
}

// ---- ingest from agents ----

var sourceRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// errBadBatch is an AuditBatch the coordinator will not store.
type errBadBatch struct{ msg string }

func (e errBadBatch) Error() string { return e.msg }

// writeAuditError answers a failed audit request. An errBadBatch is the
// caller's mistake: 400 titled with its message, hinting badHint. Any
// other error is the coordinator's: 500 (see writeInternal), hinting hint.
func (s *Server) writeAuditError(w http.ResponseWriter, err error, badHint, what, hint string) {
	var bad errBadBatch
	if errors.As(err, &bad) {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, bad.msg, badHint)
		return
	}
	s.writeInternal(w, what, err, hint)
}

// agentStamp is who sent a batch of audit events, as the coordinator
// authenticated it.
type agentStamp struct {
	node    string // the agent's node id
	cluster string // its cluster's name
	source  string // the spool the batch comes from
}

// minAuditTime is the earliest time an agent's event may carry; earlier
// ones are clock errors (and times before year 1 UTC cannot be stored).
var minAuditTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// reservedAgentMetadata are the metadata keys the coordinator sets on an
// agent's event; what an agent sends under them is dropped.
var reservedAgentMetadata = []string{"agent", "agent_time", "claimed_actor"}

// stampAgentEvent checks one event an agent sent and makes it the event
// the coordinator stores. What the coordinator knows replaces what the
// event claims: the category comes from the code, the cluster, the
// source and metadata "agent" (the node id) from the authenticated agent,
// and the chain fields are cleared. An actor that names a coordinator
// principal ("system", "anonymous", "device:<id>", or an agent of
// another cluster) becomes the agent itself, the claim kept as metadata
// claimed_actor. A time more
// than maxAuditSkew after now, or before minAuditTime, becomes now, the
// agent's time kept as metadata agent_time, and skew says how far off it
// was; a missing time is now. Other earlier times stay: an agent spools
// its events while the coordinator is out of reach and sends them later.
func stampAgentEvent(e proto.AuditEvent, a agentStamp, now time.Time) (_ proto.AuditEvent, skew time.Duration, err error) {
	info, ok := proto.LookupAuditCode(e.Code)
	if !ok || info.Category != proto.CategoryRequest && info.Category != proto.CategoryDenial && e.Code != proto.AuditEventsDropped {
		return e, 0, errBadBatch{fmt.Sprintf("event %d: agents may not send code %q", e.SourceSeq, e.Code)}
	}
	md := make(map[string]string, len(e.Metadata)+2)
	for k, v := range e.Metadata {
		md[k] = v
	}
	for _, k := range reservedAgentMetadata {
		delete(md, k)
	}
	self := "agent:" + a.cluster
	switch {
	case e.Actor == "":
		e.Actor = self
	case e.Actor == "system", e.Actor == "anonymous", strings.HasPrefix(e.Actor, "device:"),
		strings.HasPrefix(e.Actor, "agent:") && e.Actor != self:
		md["claimed_actor"] = e.Actor
		e.Actor = self
	}
	switch {
	case e.Time.IsZero():
		e.Time = now
	case e.Time.After(now.Add(maxAuditSkew)), e.Time.Before(minAuditTime):
		skew = e.Time.Sub(now).Abs()
		md["agent_time"] = e.Time.UTC().Format(time.RFC3339Nano)
		e.Time = now
	}
	md["agent"] = a.node
	e.Category, e.Cluster, e.Source, e.Metadata = info.Category, a.cluster, a.source, md
	e.Seq, e.PrevHash, e.Hash = 0, "", ""
	return e, skew, nil
}

// handleAuditIngest stores an agent's batch of spooled events. Events at
// or below the source's highest stored sequence are duplicates of a resend
// and are skipped, so each is stored once. Each event is stamped with the
// agent's identity and a bounded time (stampAgentEvent); a batch with
// events dated too far ahead is followed by one AG007W.
func (s *Server) handleAuditIngest(w http.ResponseWriter, r *http.Request, n *node) {
	var b proto.AuditBatch
	if !decode(w, r, &b) {
		return
	}
	if !sourceRE.MatchString(b.Source) {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "source must be 1-64 letters, digits, dashes or underscores", "")
		return
	}
	if len(b.Events) > proto.MaxAuditBatch {
		writeProblem(w, http.StatusRequestEntityTooLarge, proto.CodeTooLarge, fmt.Sprintf("over %d events in one batch", proto.MaxAuditBatch), "send smaller batches")
		return
	}
	s.mu.Lock()
	cluster := ""
	if c := s.clusters[n.ClusterID]; c != nil {
		cluster = c.Name
	}
	s.mu.Unlock()
	key := n.ClusterID + "/" + b.Source
	stamp := agentStamp{node: n.ID, cluster: cluster, source: b.Source}
	var ack proto.AuditAck
	err := s.st.Update(func(tx store.Tx) error {
		ack = proto.AuditAck{}
		if raw, err := tx.GetRaw(store.AuditSource, key); err == nil {
			if ack.Acked, err = strconv.ParseUint(string(raw), 10, 64); err != nil {
				return fmt.Errorf("audit source %s: %w", key, err)
			}
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		now := s.now().UTC()
		skewed, maxSkew := 0, time.Duration(0)
		for _, e := range b.Events {
			if e.SourceSeq == 0 {
				return errBadBatch{"an event has no source_seq"}
			}
			if e.SourceSeq <= ack.Acked {
				ack.Duplicates++
				continue
			}
			e, skew, err := stampAgentEvent(e, stamp, now)
			if err != nil {
				return err
			}
			if skew > 0 {
				skewed, maxSkew = skewed+1, max(maxSkew, skew)
			}
			if _, err := appendAudit(tx, e); err != nil {
				return err
			}
			ack.Acked = e.SourceSeq
			ack.Stored++
		}
		if skewed > 0 {
			_, err := appendAudit(tx, proto.AuditEvent{Code: proto.AuditAgentClockSkew, Time: now, Actor: "agent:" + cluster, Cluster: cluster,
				Outcome: proto.OutcomeFailure, Source: b.Source,
				Metadata: map[string]string{"agent": n.ID, "events": strconv.Itoa(skewed), "max_skew": maxSkew.Round(time.Second).String()}})
			if err != nil {
				return err
			}
		}
		return tx.PutRaw(store.AuditSource, key, []byte(strconv.FormatUint(ack.Acked, 10)))
	})
	if err != nil {
		s.writeAuditError(w, err, "", "store audit events", "retry")
		return
	}
	writeJSON(w, http.StatusOK, ack)
}

// ---- query ----

const (
	defaultAuditLimit = 100
	maxAuditLimit     = 1000
	// maxAuditScan bounds the records one page reads, so a filter that
	// matches little cannot make one request read the whole log; the page
	// then ends early with a cursor to go on from.
	maxAuditScan = 50_000
)

// auditFilter selects events. Empty fields match everything.
type auditFilter struct {
	categories map[proto.AuditCategory]bool
	codes      map[proto.AuditCode]bool
	severities map[string]bool
	user       string
	cluster    string
	resource   string
	from, to   time.Time
	text       string
}

func splitList(v string) []string {
	var out []string
	for _, x := range strings.Split(v, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

func parseAuditFilter(q map[string][]string) (auditFilter, error) {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return strings.Join(v, ",")
		}
		return ""
	}
	var f auditFilter
	if v := splitList(get(proto.AuditParamCategory)); v != nil {
		f.categories = map[proto.AuditCategory]bool{}
		for _, c := range v {
			f.categories[proto.AuditCategory(strings.ToLower(c))] = true
		}
	}
	if v := splitList(get(proto.AuditParamCode)); v != nil {
		f.codes = map[proto.AuditCode]bool{}
		for _, c := range v {
			f.codes[proto.AuditCode(strings.ToUpper(c))] = true
		}
	}
	if v := splitList(get(proto.AuditParamSeverity)); v != nil {
		f.severities = map[string]bool{}
		for _, sv := range v {
			l := strings.ToUpper(sv[:1])
			if proto.SeverityName(l) == "" {
				return f, fmt.Errorf("severity %q: use I, W or E (info, warning, error)", sv)
			}
			f.severities[l] = true
		}
	}
	f.user, f.cluster, f.resource = get(proto.AuditParamUser), get(proto.AuditParamCluster), get(proto.AuditParamResource)
	f.text = strings.ToLower(get(proto.AuditParamSearch))
	for k, t := range map[string]*time.Time{proto.AuditParamFrom: &f.from, proto.AuditParamTo: &f.to} {
		if v := get(k); v != "" {
			p, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return f, fmt.Errorf("%s %q: use RFC 3339, e.g. 2026-01-02T15:04:05Z", k, v)
			}
			*t = p
		}
	}
	return f, nil
}

func (f *auditFilter) match(e *proto.AuditEvent) bool {
	switch {
	case f.categories != nil && !f.categories[e.Category],
		f.codes != nil && !f.codes[e.Code],
		f.severities != nil && !f.severities[e.Code.Severity()],
		f.user != "" && !strings.EqualFold(f.user, e.Actor),
		f.cluster != "" && f.cluster != e.Cluster,
		!f.from.IsZero() && e.Time.Before(f.from),
		!f.to.IsZero() && !e.Time.Before(f.to):
		return false
	}
	if f.resource != "" {
		r := e.Resource
		if r == nil {
			return false
		}
		g, res, ok := strings.Cut(f.resource, "/")
		if !ok {
			g, res = "", f.resource
		}
		if res != r.Resource || ok && g != r.APIGroup {
			return false
		}
	}
	if f.text != "" {
		hay := []string{e.Actor, e.Object, e.Cluster, string(e.Error), e.Correlation}
		if e.Resource != nil {
			hay = append(hay, e.Resource.Path, e.Resource.Name, e.Resource.Namespace)
		}
		for k, v := range e.Metadata {
			hay = append(hay, k+"="+v)
		}
		found := false
		for _, h := range hay {
			if strings.Contains(strings.ToLower(h), f.text) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// Cursors are opaque to clients: "d<seq>" continues below seq (newest
// first), "a<seq>" continues above it (oldest first, and for following).
func encodeCursor(dir byte, seq uint64) string {
	return base64.RawURLEncoding.EncodeToString(append([]byte{dir}, strconv.FormatUint(seq, 10)...))
}

func decodeCursor(c string) (dir byte, seq uint64, err error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) < 2 || b[0] != 'a' && b[0] != 'd' {
		return 0, 0, errors.New("invalid cursor")
	}
	seq, err = strconv.ParseUint(string(b[1:]), 10, 64)
	if err != nil {
		return 0, 0, errors.New("invalid cursor")
	}
	return b[0], seq, nil
}

// queryAudit returns a page of events matching f. A cursor, if given,
// decides the direction; otherwise asc selects oldest first.
func queryAudit(st store.Store, f *auditFilter, cursor string, asc bool, limit int) (proto.AuditPage, error) {
	page := proto.AuditPage{Events: []proto.AuditEvent{}}
	err := st.View(func(tx store.Tx) error {
		head, anchor, err := getMarks(tx)
		if err != nil {
			return err
		}
		var seq uint64 // the next record to look at
		switch {
		case cursor != "":
			dir, at, err := decodeCursor(cursor)
			if err != nil {
				return errBadBatch{err.Error()}
			}
			asc = dir == 'a'
			if !asc && at == 0 {
				return nil
			}
			if asc {
				seq = at + 1
			} else {
				seq = at - 1
			}
		case asc:
			seq = anchor.Seq + 1
		default:
			seq = head.Seq
			page.Follow = encodeCursor('a', head.Seq)
		}
		if asc && seq <= anchor.Seq {
			seq = anchor.Seq + 1
		}
		last := seq // the last record looked at
		if asc {
			last = seq - 1
		}
		for scanned := 0; scanned < maxAuditScan && len(page.Events) < limit; scanned++ {
			if asc && seq > head.Seq || !asc && seq <= anchor.Seq {
				break
			}
			raw, err := tx.GetRaw(store.Audit, auditKey(seq))
			if err == nil {
				var e proto.AuditEvent
				if err := json.Unmarshal(raw, &e); err != nil {
					return fmt.Errorf("decode audit event %d: %w", seq, err)
				}
				if f.match(&e) {
					page.Events = append(page.Events, e)
				}
			} else if !errors.Is(err, store.ErrNotFound) {
				return err
			}
			last = seq
			if asc {
				seq++
			} else {
				seq--
			}
		}
		switch {
		case asc:
			page.Next = encodeCursor('a', last)
		case seq > anchor.Seq:
			page.Next = encodeCursor('d', last)
		}
		return nil
	})
	return page, err
}

// handleAuditQuery serves GET /api/v1/audit/events. Administrators see
// every event; anyone else sees only the events they are the actor of.
func (s *Server) handleAuditQuery(w http.ResponseWriter, r *http.Request, p principal) {
	q := r.URL.Query()
	f, err := parseAuditFilter(q)
	if err != nil {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, err.Error(), "")
		return
	}
	s.mu.Lock()
	isAdmin := s.isAdmin(p.user)
	s.mu.Unlock()
	if !isAdmin {
		if f.user != "" && !strings.EqualFold(f.user, p.user.Login) {
			writeProblem(w, http.StatusForbidden, proto.CodeForbidden, p.user.Login+" may only see their own audit events", "administrators see everyone's")
			return
		}
		f.user = p.user.Login
	}
	limit := defaultAuditLimit
	if v := q.Get(proto.AuditParamLimit); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit <= 0 {
			writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "limit must be a positive number", "")
			return
		}
		limit = min(limit, maxAuditLimit)
	}
	order := q.Get(proto.AuditParamOrder)
	if order != "" && order != "asc" && order != "desc" {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "order must be asc or desc", "")
		return
	}
	page, err := queryAudit(s.st, &f, q.Get(proto.AuditParamCursor), order == "asc", limit)
	if err != nil {
		s.writeAuditError(w, err, "start again without a cursor", "read audit log", "")
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// ---- verification ----

// VerifyAudit checks the audit chain in st from the retention anchor to
// the head and names the first record that fails: one whose content does
// not match its hash (edited), that does not follow the one before
// (replaced or reordered), or that is missing (deleted). With o.Key it
// also checks the signed checkpoints in the store, and with o.Against an
// exported checkpoint (see AuditVerifyOptions): a record whose hash is not
// the one a checkpoint signed was rewritten, and a log that ends before a
// checkpoint's record was cut back.
func VerifyAudit(st store.Store, o AuditVerifyOptions) (proto.AuditVerification, error) {
	var v proto.AuditVerification
	err := st.View(func(tx store.Tx) error {
		v = proto.AuditVerification{Against: o.Against}
		head, anchor, err := getMarks(tx)
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

func (s *Server) handleAuditVerify(w http.ResponseWriter, r *http.Request, _ principal) {
	o := AuditVerifyOptions{Key: s.auditKey.Public().(ed25519.PublicKey)}
	if r.Method == http.MethodPost {
		var req proto.AuditVerifyRequest
		if !decode(w, r, &req) {
			return
		}
		if req.Checkpoint == nil {
			writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "checkpoint is missing", "send the exported checkpoint as {\"checkpoint\": {...}}, or GET to verify without one")
			return
		}
		o.Against = req.Checkpoint
	}
	v, err := VerifyAudit(s.st, o)
	if err != nil {
		s.writeInternal(w, "verify audit log", err, "")
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// ---- retention ----

// maxPrunePerTx bounds the records one pruning transaction removes.
const maxPrunePerTx = 10_000

// maxAuditSkew is how far ahead of the coordinator's clock an event may
// be dated. An agent's event dated further ahead is stored with the time
// the coordinator received it (stampAgentEvent); a stored record dated
// further ahead (written before that rule, or while the coordinator's own
// clock was wrong) does not hold back retention (pruneAudit).
const maxAuditSkew = 5 * time.Minute

// pruneAudit removes the records of whole UTC days that lie entirely
// before now minus the retention, oldest first, and moves the anchor to
// the last one removed. It returns how many it removed. A record dated
// more than maxAuditSkew after now cannot be dated right; it is kept as
// long as the first correctly dated record after it, so that one such
// record does not stop retention for everything behind it. Checkpoints
// of removed records are removed with them.
func pruneAudit(st store.Store, retention time.Duration, now time.Time) (int, error) {
	if retention <= 0 {
		return 0, nil
	}
	cutoff := now.Add(-retention).UTC().Truncate(24 * time.Hour)
	future := now.Add(maxAuditSkew)
	total := 0
	for {
		n := 0
		err := st.Update(func(tx store.Tx) error {
			n = 0
			head, anchor, err := getMarks(tx)
			if err != nil {
				return err
			}
			var misdated []uint64 // since the last record removed
			for seq := anchor.Seq + 1; seq <= head.Seq && n < maxPrunePerTx; seq++ {
				raw, err := tx.GetRaw(store.Audit, auditKey(seq))
				if err != nil {
					return err
				}
				var e proto.AuditEvent
				if err := json.Unmarshal(raw, &e); err != nil {
					return fmt.Errorf("decode audit event %d: %w", seq, err)
				}
				if e.Time.After(future) {
					misdated = append(misdated, seq)
					continue
				}
				if !e.Time.Before(cutoff) {
					break
				}
				for _, m := range append(misdated, seq) {
					if err := tx.Delete(store.Audit, auditKey(m)); err != nil {
						return err
					}
					n++
				}
				misdated = misdated[:0]
				anchor = auditMark{Seq: seq, Hash: e.Hash, Time: e.Time}
			}
			if n == 0 {
				return nil
			}
			if err := pruneCheckpoints(tx, anchor.Seq); err != nil {
				return err
			}
			return store.Put(tx, store.Meta, metaAuditAnchor, anchor)
		})
		total += n
		if err != nil || n < maxPrunePerTx {
			return total, err
		}
	}
}

// pruneCheckpoints removes the checkpoints of records before the anchor;
// one of the anchor itself stays, and verifies against it.
func pruneCheckpoints(tx store.Tx, anchor uint64) error {
	var old []string
	stop := errors.New("stop")
	err := tx.ForEach(store.AuditCheckpoints, func(k string, _ []byte) error {
		if k >= auditKey(anchor) {
			return stop
		}
		old = append(old, k)
		return nil
	})
	if err != nil && !errors.Is(err, stop) {
		return err
	}
	for _, k := range old {
		if err := tx.Delete(store.AuditCheckpoints, k); err != nil {
			return err
		}
	}
	return nil
}

// auditJanitor applies the retention at start and every hour.
func (s *Server) auditJanitor() {
	defer s.wg.Done()
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := pruneAudit(s.st, s.cfg.AuditRetention, s.now()); err != nil {
			s.log.Error("prune audit log", "err", err)
		} else if n > 0 {
			s.log.Info("pruned audit log", "records", n, "retention", s.cfg.AuditRetention)
		}
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

// ---- events without a change of state ----

// nodeActorLocked names n as an audit actor, with its cluster for an
// agent. Called with s.mu held.
func (s *Server) nodeActorLocked(n *node) (actor, cluster string) {
	if n.Kind == proto.KindAgent {
		if c := s.clusters[n.ClusterID]; c != nil {
			cluster = c.Name
		}
		return "agent:" + cluster, cluster
	}
	if u := s.users[n.UserID]; u != nil {
		return u.Login, ""
	}
	return "device:" + n.ID, ""
}

// auditStream records a node's map stream opening or closing.
func (s *Server) auditStream(n *node, actor, cluster string, open bool) {
	code := map[bool]map[proto.NodeKind]proto.AuditCode{
		true:  {proto.KindAgent: proto.AuditAgentConnected, proto.KindDevice: proto.AuditDeviceConnected},
		false: {proto.KindAgent: proto.AuditAgentGone, proto.KindDevice: proto.AuditDeviceGone},
	}[open][n.Kind]
	s.audit(proto.AuditEvent{Code: code, Actor: actor, Cluster: cluster, Object: n.ID,
		Metadata: map[string]string{"hostname": n.Hostname}})
}
