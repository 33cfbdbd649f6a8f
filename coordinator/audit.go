package coordinator

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// What the coordinator records in its audit log (package auditlog), and
// the audit routes. An event describing a change is appended in the same
// store transaction as the change (recordChange), so the change and its
// record commit together; events without a change of state (failures,
// streams opening and closing, agents' events) are queued and stored in
// batches by the audit writer.

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
	kick(wake)
}

// kick wakes whoever waits on wake, a channel of capacity 1, without
// blocking: a wake-up already pending serves for this one too.
func kick(wake chan struct{}) {
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
	kick(wake)
	select {
	case <-done:
	case <-s.stop:
	}
}

// auditWriter stores queued events until Close, and what is queued then.
func (s *Server) auditWriter() {
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
		// As many events a transaction as the store takes (etcd bounds
		// the keys one commit writes).
		for chunk := range slices.Chunk(evs, auditlog.AppendsPerTx(s.store)) {
			err := s.store.Update(func(tx store.Tx) error {
				for _, e := range chunk {
					if _, err := auditlog.Append(tx, e); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				s.log.Error("store audit events", "events", len(chunk), "err", err)
				// Count them, so the next batch records the loss.
				q.mu.Lock()
				if q.lost == 0 {
					q.lostFirst = chunk[0].Time
				}
				q.lost += uint64(len(chunk))
				q.lostLast = chunk[len(chunk)-1].Time
				q.mu.Unlock()
				s.metrics.auditLost.Add(float64(len(chunk)))
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
	"login.console":        proto.AuditConsoleSignIn,
	"session.revoke":       proto.AuditSessionRevoked,
	"session.end":          proto.AuditSessionEnded,
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
// Called with s.mu held.
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

var sourceRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`) })

// errBadBatch is an AuditBatch the coordinator will not store.
type errBadBatch struct{ msg string }

func (e errBadBatch) Error() string { return e.msg }

// writeAuditError answers a failed audit request. An errBadBatch or an
// auditlog.ErrInvalidCursor is the caller's mistake: 400 titled with its message, hinting badHint. Any
// other error is the coordinator's: 500 (see writeInternal), hinting hint.
func (s *Server) writeAuditError(w http.ResponseWriter, err error, badHint, what, hint string) {
	var bad errBadBatch
	if errors.As(err, &bad) {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, bad.msg, badHint)
		return
	}
	if errors.Is(err, auditlog.ErrInvalidCursor) {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, auditlog.ErrInvalidCursor.Error(), badHint)
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
// than auditlog.MaxSkew after now, or before minAuditTime, becomes now, the
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
	case e.Time.After(now.Add(auditlog.MaxSkew)), e.Time.Before(minAuditTime):
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
// events dated too far ahead is followed by one AG007W. The agent is
// checked when the headers arrive (s.agent in the route table) and again,
// under s.mu, when the batch is written: a batch from an agent removed in
// between gets 401 and stores nothing.
func (s *Server) handleAuditIngest(w http.ResponseWriter, r *http.Request, n *node) {
	var b proto.AuditBatch
	if !decode(w, r, &b) {
		return
	}
	if !sourceRE().MatchString(b.Source) {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "source must be 1-64 letters, digits, dashes or underscores", "")
		return
	}
	if len(b.Events) > proto.MaxAuditBatch {
		writeProblem(w, http.StatusRequestEntityTooLarge, proto.CodeTooLarge, fmt.Sprintf("over %d events in one batch", proto.MaxAuditBatch), "send smaller batches")
		return
	}
	// The node was authenticated when the headers arrived; the batch may
	// have taken long to follow, and the agent may have been removed
	// meanwhile (its join token revoked, its cluster deleted). Look it
	// up again with s.mu held across the write: every removal takes
	// s.mu, so it lands entirely before this check (the batch is
	// refused, nothing is stored) or after the write.
	s.mu.Lock()
	c := s.clusters[n.ClusterID]
	if s.nodes[n.ID] == nil || c == nil {
		s.mu.Unlock()
		writeProblem(w, http.StatusUnauthorized, proto.CodeUnauthenticated, "agent is no longer registered: its join token was revoked or its cluster deleted", "register the agent again with a valid join token")
		return
	}
	cluster := c.Name
	key := n.ClusterID + "/" + b.Source
	stamp := agentStamp{node: n.ID, cluster: cluster, source: b.Source}
	now := s.now().UTC()
	// Refuse a bad batch whole, before storing any of it.
	var err error
	for _, e := range b.Events {
		if e.SourceSeq == 0 {
			err = errBadBatch{"an event has no source_seq"}
			break
		}
		if _, _, err = stampAgentEvent(e, stamp, now); err != nil {
			break
		}
	}
	// As many events a transaction as the store takes, with room for the
	// clock skew event and the source's sequence; each commits the
	// source's sequence with its events, so a failure part way stores a
	// prefix the agent's resend skips.
	per := max(1, auditlog.AppendsPerTx(s.store)-2)
	var ack proto.AuditAck
	skewed, maxSkew := 0, time.Duration(0)
	for start := 0; err == nil && (start == 0 || start < len(b.Events)); start += per {
		chunk := b.Events[start:min(start+per, len(b.Events))]
		last := len(b.Events)-start <= per
		var got proto.AuditAck
		var gotSkewed int
		var gotMax time.Duration
		err = s.store.Update(func(tx store.Tx) error {
			got, gotSkewed, gotMax = proto.AuditAck{}, skewed, maxSkew
			if raw, err := tx.GetRaw(store.AuditSource, key); err == nil {
				if got.Acked, err = strconv.ParseUint(string(raw), 10, 64); err != nil {
					return fmt.Errorf("audit source %s: %w", key, err)
				}
			} else if !errors.Is(err, store.ErrNotFound) {
				return err
			}
			for _, e := range chunk {
				if e.SourceSeq <= got.Acked {
					got.Duplicates++
					continue
				}
				e, skew, err := stampAgentEvent(e, stamp, now)
				if err != nil {
					return err
				}
				if skew > 0 {
					gotSkewed, gotMax = gotSkewed+1, max(gotMax, skew)
				}
				if _, err := auditlog.Append(tx, e); err != nil {
					return err
				}
				got.Acked = e.SourceSeq
				got.Stored++
			}
			if last && gotSkewed > 0 {
				_, err := auditlog.Append(tx, proto.AuditEvent{Code: proto.AuditAgentClockSkew, Time: now, Actor: "agent:" + cluster, Cluster: cluster,
					Outcome: proto.OutcomeFailure, Source: b.Source,
					Metadata: map[string]string{"agent": n.ID, "events": strconv.Itoa(gotSkewed), "max_skew": gotMax.Round(time.Second).String()}})
				if err != nil {
					return err
				}
			}
			return tx.PutRaw(store.AuditSource, key, []byte(strconv.FormatUint(got.Acked, 10)))
		})
		if err == nil {
			ack.Acked, ack.Stored, ack.Duplicates = got.Acked, ack.Stored+got.Stored, ack.Duplicates+got.Duplicates
			skewed, maxSkew = gotSkewed, gotMax
		}
	}
	s.mu.Unlock()
	if err != nil {
		s.writeAuditError(w, err, "", "store audit events", "retry")
		return
	}
	writeJSON(w, http.StatusOK, ack)
}

// ---- query ----

// handleAuditQuery serves GET /api/v1/audit/events. Administrators see
// every event; anyone else sees only the events they are the actor of.
func (s *Server) handleAuditQuery(w http.ResponseWriter, r *http.Request, p principal) {
	q := r.URL.Query()
	f, err := auditlog.ParseFilter(q)
	if err != nil {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, err.Error(), "")
		return
	}
	s.mu.Lock()
	isAdmin := s.isAdmin(p.user)
	s.mu.Unlock()
	if !isAdmin {
		if f.User != "" && !strings.EqualFold(f.User, p.user.Login) {
			writeProblem(w, http.StatusForbidden, proto.CodeForbidden, p.user.Login+" may only see their own audit events", "administrators see everyone's")
			return
		}
		f.User = p.user.Login
	}
	limit := auditlog.DefaultLimit
	if v := q.Get(proto.AuditParamLimit); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit <= 0 {
			writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "limit must be a positive number", "")
			return
		}
		limit = min(limit, auditlog.MaxLimit)
	}
	order := q.Get(proto.AuditParamOrder)
	if order != "" && order != "asc" && order != "desc" {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "order must be asc or desc", "")
		return
	}
	page, err := auditlog.Query(s.store, &f, q.Get(proto.AuditParamCursor), order == "asc", limit)
	if err != nil {
		s.writeAuditError(w, err, "start again without a cursor", "read audit log", "")
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// ---- verification ----

func (s *Server) handleAuditVerify(w http.ResponseWriter, r *http.Request, _ principal) {
	o := auditlog.VerifyOptions{Key: s.auditKey.Public().(ed25519.PublicKey)}
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
	var refs []recordingRef
	o.Visit = func(e proto.AuditEvent) {
		if ref, ok := recordingRefOf(e); ok {
			refs = append(refs, ref)
		}
	}
	v, err := auditlog.Verify(s.store, o)
	if err == nil && v.OK {
		err = s.checkRecordings(&v, refs)
	}
	if err != nil {
		s.writeInternal(w, "verify audit log", err, "")
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// ---- index ----

// auditIndexBatch is how many records one transaction of BuildIndex
// indexes, unless the store takes fewer (AppendsPerTx). Larger bbolt
// transactions are slower, not faster: their entries land all over the
// index and bbolt splits its pages only at the commit.
const auditIndexBatch = 2000

// auditIndexer indexes the records of a log written before the audit
// index existed, once (singleton work); Query scans until it is done.
// It logs how long it took, and stops with ctx (the next start goes on
// from there).
func (s *Server) auditIndexer(ctx context.Context) {
	start := time.Now()
	logged := start
	n, err := auditlog.BuildIndex(ctx, s.store, min(auditIndexBatch, auditlog.AppendsPerTx(s.store)), func(done, total uint64) {
		if time.Since(logged) >= 10*time.Second {
			logged = time.Now()
			s.log.Info("indexing the audit log", "done", done, "records", total, "elapsed", time.Since(start).Round(time.Millisecond))
		}
	})
	switch {
	case err != nil && ctx.Err() == nil:
		s.log.Error("index the audit log: audit queries scan the log until it is indexed (at the next start)", "indexed", n, "err", err)
	case err != nil:
		s.log.Info("indexing the audit log stopped; the next start goes on", "indexed", n)
	case n > 0:
		s.log.Info("indexed the audit log", "records", n, "took", time.Since(start).Round(time.Millisecond))
	}
}

// ---- retention ----

// auditJanitor applies the retention at start and every hour, until ctx
// ends (singleton work).
func (s *Server) auditJanitor(ctx context.Context) {
	s.pruneAudit()
	s.every(ctx, time.Hour, s.pruneAudit)
}

// pruneAudit applies the retention. Records an export destination has
// not taken yet are kept (auditexport.Exporter.Hold).
func (s *Server) pruneAudit() {
	hold := uint64(math.MaxUint64)
	if s.export != nil {
		var err error
		if hold, err = s.export.Hold(); err != nil {
			s.log.Error("prune audit log: read the export cursors", "err", err)
			return
		}
	}
	if n, err := auditlog.PruneHeld(s.store, s.cfg.AuditRetention, s.now(), hold); err != nil {
		s.log.Error("prune audit log", "err", err)
	} else if n > 0 {
		s.log.Info("pruned audit log", "records", n, "retention", s.cfg.AuditRetention)
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
