package coordinator

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/recordings"
	"github.com/clustral/clustral/proto"
)

// Session recordings: agents ship each finished recording with PUT
// /api/v1/recordings/{id} (the agent's node token; the recording must
// name the agent's own cluster), administrators list them and read them
// back. They are kept in Config.Recordings. The end event of a recorded
// session (RQ004I) carries the recording's SHA-256, so audit verify also
// proves a stored recording was not edited (checkRecordings).

// checkRecordingHeader reads the header line of a recording an agent of
// cluster sends as session id, and returns it.
func checkRecordingHeader(br *bufio.Reader, id, cluster string) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return nil, errors.New("recording has no complete header line")
	}
	h, err := proto.ParseRecordingHeader(line)
	if err != nil {
		return nil, err
	}
	if h.Session.ID != id || h.Session.Cluster != cluster {
		return nil, fmt.Errorf("recording names session %q of cluster %q; this agent may ship only session %q of cluster %q", h.Session.ID, h.Session.Cluster, id, cluster)
	}
	return line, nil
}

// handleAppendRecording takes the part of a running session's recording
// its agent shipped so far (PATCH /api/v1/recordings/{id}?offset=N): the
// first part must start with the header, naming the agent's cluster.
func (s *Server) handleAppendRecording(w http.ResponseWriter, r *http.Request, n *node) {
	id := r.PathValue("id")
	if err := proto.CheckRecordingID(id); err != nil {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, err.Error(), "")
		return
	}
	off, err := strconv.ParseInt(r.URL.Query().Get(proto.RecordingParamOffset), 10, 64)
	if err != nil || off < 0 {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("offset %q is not a byte offset", r.URL.Query().Get(proto.RecordingParamOffset)), "give ?offset=N, N >= 0")
		return
	}
	s.mu.Lock()
	_, cluster := s.nodeActorLocked(n)
	s.mu.Unlock()
	// The header is checked whatever the offset: the first part's, or
	// the live part's the store holds.
	var body io.Reader = r.Body
	if off == 0 {
		br := bufio.NewReaderSize(r.Body, 16<<10)
		line, err := checkRecordingHeader(br, id, cluster)
		if err != nil {
			writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "recording "+id+": "+err.Error(), "")
			return
		}
		body = io.MultiReader(bytes.NewReader(bytes.Clone(line)), br)
	} else {
		rc, err := s.recordings.OpenLive(id)
		if err == nil {
			_, err = checkRecordingHeader(bufio.NewReaderSize(rc, 16<<10), id, cluster)
			rc.Close()
		}
		if err != nil && !errors.Is(err, recordings.ErrNotFound) {
			writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "recording "+id+": "+err.Error(), "")
			return
		}
	}
	size, err := s.recordings.Append(id, off, body)
	if errors.Is(err, recordings.ErrGap) {
		writeProblem(w, http.StatusConflict, proto.CodeConflict, "recording "+id+": "+err.Error(), "send it again from offset 0")
		return
	}
	if s.writeRecordingError(w, id, err, "is already stored", "append to live recording") {
		return
	}
	writeJSON(w, http.StatusOK, proto.RecordingAppended{Bytes: size, Watched: s.recordings.LiveWatched(id)})
}

func (s *Server) handlePutRecording(w http.ResponseWriter, r *http.Request, n *node) {
	id := r.PathValue("id")
	if err := proto.CheckRecordingID(id); err != nil {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, err.Error(), "")
		return
	}
	s.mu.Lock()
	_, cluster := s.nodeActorLocked(n)
	s.mu.Unlock()
	// The header comes first: a recording of another cluster is refused
	// before anything is stored.
	br := bufio.NewReaderSize(r.Body, 16<<10)
	line, err := checkRecordingHeader(br, id, cluster)
	if err != nil {
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, "recording "+id+": "+err.Error(), "")
		return
	}
	info, err := s.recordings.Put(id, io.MultiReader(bytes.NewReader(bytes.Clone(line)), br))
	if s.writeRecordingError(w, id, err, "is already stored with other content", "store recording") {
		return
	}
	writeJSON(w, http.StatusOK, info)
}

// writeRecordingError answers the error of storing recording id, if
// there is one, and reports whether there was: ErrConflict is 409 saying
// the recording conflict, a body over the limit 413, anything else an
// internal error while doing what.
func (s *Server) writeRecordingError(w http.ResponseWriter, id string, err error, conflict, what string) bool {
	var mbe *http.MaxBytesError
	switch {
	case err == nil:
		return false
	case errors.Is(err, recordings.ErrConflict):
		writeProblem(w, http.StatusConflict, proto.CodeConflict, "recording "+id+" "+conflict, "")
	case errors.As(err, &mbe):
		writeProblem(w, http.StatusRequestEntityTooLarge, proto.CodeTooLarge, fmt.Sprintf("recording %s is over %d bytes", id, mbe.Limit), "lower the agent's --recording-max-bytes")
	default:
		s.writeInternal(w, what, err, "")
	}
	return true
}

func (s *Server) handleListRecordings(w http.ResponseWriter, r *http.Request, _ principal) {
	q := r.URL.Query()
	var since time.Time
	if v := q.Get(proto.RecordingParamSince); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("since %q is not an RFC 3339 time", v), "use e.g. 2026-01-02T15:04:05Z")
			return
		}
		since = t
	}
	all, err := s.recordings.List()
	if err != nil {
		s.writeInternal(w, "list recordings", err, "")
		return
	}
	out := []proto.RecordingInfo{}
	for _, ri := range all {
		m := ri.Session
		if u := q.Get(proto.RecordingParamUser); u != "" && m.User != u {
			continue
		}
		if c := q.Get(proto.RecordingParamCluster); c != "" && m.Cluster != c {
			continue
		}
		if p := q.Get(proto.RecordingParamPod); p != "" && m.Pod != p {
			continue
		}
		if !since.IsZero() && m.Start.Before(since) {
			continue
		}
		out = append(out, ri)
	}
	writeJSON(w, http.StatusOK, out)
}

// handleGetRecording answers a stored recording, or with ?live=true
// the part of a running session's recording shipped so far; from
// ?offset=N on, if given. HeaderRecordingState says which.
func (s *Server) handleGetRecording(w http.ResponseWriter, r *http.Request, _ principal) {
	id := r.PathValue("id")
	q := r.URL.Query()
	var off int64
	if v := q.Get(proto.RecordingParamOffset); v != "" {
		var err error
		if off, err = strconv.ParseInt(v, 10, 64); err != nil || off < 0 {
			writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("offset %q is not a byte offset", v), "give ?offset=N, N >= 0")
			return
		}
	}
	live, _ := strconv.ParseBool(q.Get(proto.RecordingParamLive))
	state := proto.RecordingStateStored
	rc, err := s.recordings.Open(id)
	if live && errors.Is(err, recordings.ErrNotFound) {
		state = proto.RecordingStateLive
		rc, err = s.recordings.OpenLive(id)
		if err == nil {
			s.recordings.WatchLive(id)
		}
		if errors.Is(err, recordings.ErrNotFound) {
			// Stored between the two looks.
			state = proto.RecordingStateStored
			rc, err = s.recordings.Open(id)
		}
	}
	switch {
	case errors.Is(err, recordings.ErrNotFound):
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, "no recording "+id, "list them with clustral sessions ls")
		return
	case err != nil && proto.CheckRecordingID(id) != nil:
		writeProblem(w, http.StatusBadRequest, proto.CodeBadRequest, err.Error(), "")
		return
	case err != nil:
		s.writeInternal(w, "open recording", err, "")
		return
	}
	defer rc.Close()
	if off > 0 {
		if sk, ok := rc.(io.Seeker); ok {
			_, err = sk.Seek(off, io.SeekStart)
		} else {
			_, err = io.CopyN(io.Discard, rc, off)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			s.writeInternal(w, "read recording", err, "")
			return
		}
	}
	w.Header().Set("Content-Type", "application/x-asciicast")
	w.Header().Set(proto.HeaderRecordingState, state)
	io.Copy(w, rc)
}

// recordingRef is what an end event says of its recording.
type recordingRef struct {
	seq        uint64
	id, sha256 string
}

// recordingRefOf returns the recording an audit event vouches for.
func recordingRefOf(e proto.AuditEvent) (recordingRef, bool) {
	if e.Code != proto.AuditStreamEnded && e.Code != proto.AuditRecordingRescued || e.Metadata[proto.MetaRecordingSHA256] == "" {
		return recordingRef{}, false
	}
	return recordingRef{seq: e.Seq, id: e.Metadata[proto.MetaRecording], sha256: e.Metadata[proto.MetaRecordingSHA256]}, true
}

// checkRecordings checks the stored recordings that the verified events
// vouch for, and fails v at the first whose content does not match. A
// recording not (yet) stored is not a failure: its agent may not have
// shipped it. Stored recordings no event vouches for are counted in
// v.Unvouched.
func (s *Server) checkRecordings(v *proto.AuditVerification, refs []recordingRef) error {
	stored, err := s.recordings.List()
	if err != nil {
		return fmt.Errorf("list recordings: %w", err)
	}
	vouched := make(map[string]bool, len(refs))
	for _, ref := range refs {
		vouched[ref.id] = true
	}
	var ids []string
	for _, ri := range stored {
		if !vouched[ri.Session.ID] {
			ids = append(ids, ri.Session.ID)
		}
	}
	slices.Sort(ids)
	v.Unvouched, v.UnvouchedIDs = len(ids), ids[:min(len(ids), proto.MaxUnvouchedIDs)]
	for _, ref := range refs {
		sum, err := recordings.Digest(s.recordings, ref.id)
		if errors.Is(err, recordings.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		v.Recordings++
		if sum != ref.sha256 {
			v.OK, v.BadSeq, v.BadRecording = false, ref.seq, ref.id
			v.Problem = fmt.Sprintf("recording %s was edited: its content does not match the digest in its session's end event (record %d)", ref.id, ref.seq)
			return nil
		}
	}
	return nil
}

// ---- retention ----

// recordingJanitor applies the recording retention at start and every
// hour, until ctx ends (singleton work). Without a retention it does
// nothing.
func (s *Server) recordingJanitor(ctx context.Context) {
	if s.cfg.RecordingRetention <= 0 {
		return
	}
	s.pruneRecordings()
	s.every(ctx, time.Hour, s.pruneRecordings)
}

// liveRecordingJanitor removes, every ten minutes until ctx ends, the
// live parts of sessions whose agent stopped appending more than
// recordings.StaleLive ago without shipping the whole recording (its
// disk lost, or it left the cluster): singleton work, since replicas
// that share their store share the live parts. The first sweep is ten
// minutes after it starts, not at once: a part is stale only after an
// hour, and the coordinator's clock is not read while it starts.
func (s *Server) liveRecordingJanitor(ctx context.Context) {
	drop := func() {
		n, err := s.recordings.DropStaleLive(s.now().Add(-recordings.StaleLive))
		if err != nil {
			s.log.Error("remove stale live recordings", "err", err)
		}
		if n > 0 {
			s.log.Info("removed the live parts of recordings never shipped whole", "recordings", n, "silent_for", recordings.StaleLive)
		}
	}
	s.every(ctx, 10*time.Minute, drop)
}

// pruneRecordings removes the stored recordings whose sessions started
// before the retention, each with an AL006I event, except those an
// audit event not yet taken by an export destination names
// (heldRecordings): a destination that is behind still gets the events
// with the recordings they vouch for in place.
func (s *Server) pruneRecordings() {
	retention := s.cfg.RecordingRetention
	cutoff := s.now().Add(-retention)
	all, err := s.recordings.List()
	if err != nil {
		s.log.Error("recording retention: list recordings", "err", err)
		return
	}
	var old []proto.RecordingInfo
	for _, ri := range all {
		if started(ri).Before(cutoff) {
			old = append(old, ri)
		}
	}
	if len(old) == 0 {
		return
	}
	held, err := s.heldRecordings()
	if err != nil {
		s.log.Error("recording retention: read the audit events export destinations have not taken", "err", err)
		return
	}
	removed, kept := 0, 0
	for _, ri := range old {
		id := ri.Session.ID
		if held[id] {
			kept++
			continue
		}
		if err := s.recordings.Delete(id); err != nil {
			if !errors.Is(err, recordings.ErrNotFound) {
				s.log.Error("recording retention: remove recording", "recording", id, "err", err)
			}
			continue
		}
		removed++
		s.audit(proto.AuditEvent{Code: proto.AuditRecordingPruned, Actor: "system", Cluster: ri.Session.Cluster, Correlation: id,
			Resource: &proto.AuditResource{Verb: "create", Resource: "pods", Subresource: ri.Session.Subresource, Namespace: ri.Session.Namespace, Name: ri.Session.Pod},
			Metadata: map[string]string{proto.MetaRecording: id, proto.MetaRecordingSHA256: ri.SHA256, proto.MetaRecordingBytes: strconv.FormatInt(ri.Bytes, 10),
				"started": started(ri).UTC().Format(time.RFC3339), "retention": retention.String()}})
	}
	if removed > 0 || kept > 0 {
		s.log.Info("recording retention applied", "removed", removed, "held_for_export", kept, "retention", retention)
	}
}

// started is when the session of a recording started; for a header
// without a start, when the recording was stored.
func started(ri proto.RecordingInfo) time.Time {
	if ri.Session.Start.IsZero() {
		return ri.Stored
	}
	return ri.Session.Start
}

// heldRecordings returns the recordings named by audit events that an
// export destination has not taken yet (auditexport.Exporter.Hold).
func (s *Server) heldRecordings() (map[string]bool, error) {
	if s.export == nil {
		return nil, nil
	}
	hold, err := s.export.Hold()
	if err != nil || hold == math.MaxUint64 {
		return nil, err
	}
	held := map[string]bool{}
	err = auditlog.Scan(s.store, hold+1, func(e proto.AuditEvent) {
		if id := e.Metadata[proto.MetaRecording]; id != "" {
			held[id] = true
		}
	})
	return held, err
}
