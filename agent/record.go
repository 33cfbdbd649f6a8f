package agent

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/clustral/clustral/agent/recording"
	"github.com/clustral/clustral/proto"
)

// Exec and attach sessions whose grants ask for a recording (see
// authorize: the strongest policy of the allowing grants) are recorded by
// ProxyConfig.Recorder. The recording starts before the request is
// forwarded, so under the required policy a recording that cannot be
// written refuses the session before the apiserver, let alone the pod,
// sees it; it begins when the apiserver switches protocols, and the
// upgraded connection's upstream side is wrapped so that every byte is
// recorded before it goes on. The stream's end event (RQ004I) carries the
// recording's id, SHA-256, size and status.

// recordable reports whether info opens a session that is recorded:
// exec, or attach (which kubectl debug also uses), on a pod.
func recordable(info requestInfo) bool {
	return info.IsResourceRequest && info.APIGroup == "" && info.Resource == "pods" &&
		(info.Subresource == "exec" || info.Subresource == "attach")
}

// startRecording starts the recording of s if its grants ask for one. It
// returns a denial when the recording is required and cannot start; a
// best-effort recording that cannot start is logged and reported in the
// end event.
func (p *Proxy) startRecording(s *stream, r *http.Request) *denial {
	if s.imp.recording.Rank() == 0 || !recordable(s.info) {
		return nil
	}
	q := r.URL.Query()
	tty, _ := strconv.ParseBool(q.Get("tty"))
	meta := proto.RecordingSession{
		ID: s.corr, User: s.login, Cluster: p.cluster, Namespace: s.info.Namespace, Pod: s.info.Name,
		Container: q.Get("container"), Subresource: s.info.Subresource, Command: q["command"], TTY: tty,
		Start: p.now().UTC(), Correlation: s.corr, TraceID: s.trace.TraceID().String(), Stdin: s.imp.recordStdin,
	}
	if s.imp.user != s.login {
		meta.KubeUser = s.imp.user
	}
	var err error
	if p.recorder == nil {
		err = errors.New("this agent has no recording directory")
	} else {
		s.rec, err = p.recorder.Start(meta, s.imp.recording == proto.RecordingRequired)
	}
	if err == nil {
		s.recording.Store(true)
		p.liveChanged(s) // its report now names the recording
		return nil
	}
	s.recErr = err
	p.log.LogAttrs(s.ctx, slog.LevelWarn, "session recording could not start", appendRequestIDs([]slog.Attr{
		slog.String("cluster", p.cluster), slog.String("user", s.login), slog.String("policy", string(s.imp.recording)), slog.Any("err", err)},
		s.corr, s.trace)...)
	if s.imp.recording != proto.RecordingRequired {
		return nil
	}
	return p.recordingRefused(s, err)
}

func (p *Proxy) recordingRefused(s *stream, err error) *denial {
	return deny(http.StatusServiceUnavailable, proto.CodeRecordingUnavailable,
		"Your role on cluster '%s' requires that this %s session be recorded, and the agent cannot record it (%v), so the session was refused before it reached the pod. Ask an admin to check the disk of the clustral agent's recording directory; then try again.",
		p.cluster, s.info.Subresource, err)
}

// beginRecording is called with the apiserver's answer to an upgrade: on
// a protocol switch it begins the recording and wraps the connection, on
// any other answer it drops the recording. Under the required policy a
// recording that cannot begin fails the request.
func (p *Proxy) beginRecording(res *http.Response) error {
	s := streamFrom(res.Request.Context())
	if s == nil || s.rec == nil {
		return nil
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		s.rec.Abort()
		s.rec = nil
		return nil
	}
	protocol := res.Header.Get("Sec-WebSocket-Protocol")
	if protocol == "" {
		protocol = res.Header.Get("X-Stream-Protocol-Version")
	}
	err := s.rec.Begin(res.Header.Get("Upgrade"), protocol)
	if err == nil {
		rwc, ok := res.Body.(io.ReadWriteCloser)
		if !ok {
			err = fmt.Errorf("the upgraded connection is not writable (%T)", res.Body)
		} else {
			res.Body = s.rec.Conn(rwc)
			s.recBegan = true
			return nil
		}
	}
	s.recErr = err
	if s.imp.recording == proto.RecordingRequired {
		d := p.recordingRefused(s, err)
		s.cancel(d)
		return d
	}
	return nil
}

// endRecording closes the recording of s, if it has one, and keeps its
// result for the end event.
func (p *Proxy) endRecording(s *stream) {
	if s == nil || s.rec == nil {
		return
	}
	rec := s.rec
	s.rec = nil
	if !s.recBegan {
		rec.Abort()
		return
	}
	res := rec.Close()
	s.recResult = &res
	if res.Err != nil {
		p.log.LogAttrs(s.ctx, slog.LevelWarn, "session recording incomplete", appendRequestIDs([]slog.Attr{
			slog.String("cluster", p.cluster), slog.String("user", s.login), slog.String("status", res.Status), slog.Any("err", res.Err)},
			s.corr, s.trace)...)
	}
}

// rescuedEvent is the RQ005W of a recording a stopped agent left: it
// vouches for the recording as the session's RQ004I would have.
func rescuedEvent(rec recording.Recovered, now time.Time) proto.AuditEvent {
	m := rec.Session
	actor := m.User
	if actor == "" {
		actor = "unknown"
	}
	return proto.AuditEvent{
		Code: proto.AuditRecordingRescued, Time: now.UTC(), Actor: actor, Cluster: m.Cluster, Outcome: proto.OutcomeFailure,
		Resource:    &proto.AuditResource{Verb: "create", Resource: "pods", Subresource: m.Subresource, Namespace: m.Namespace, Name: m.Pod},
		Correlation: rec.ID, TraceID: m.TraceID,
		Metadata: map[string]string{proto.MetaRecording: rec.ID, proto.MetaRecordingSHA256: rec.SHA256,
			proto.MetaRecordingBytes: strconv.FormatInt(rec.Bytes, 10), proto.MetaRecordingStatus: rec.Status},
	}
}

// recordingMetadata adds what the end event of s says of its recording.
func recordingMetadata(md map[string]string, s *stream) map[string]string {
	switch {
	case s.recResult != nil:
		if md == nil {
			md = map[string]string{}
		}
		md[proto.MetaRecording] = s.recResult.ID
		md[proto.MetaRecordingStatus] = s.recResult.Status
		if s.recResult.SHA256 != "" {
			md[proto.MetaRecordingSHA256] = s.recResult.SHA256
			md[proto.MetaRecordingBytes] = strconv.FormatInt(s.recResult.Bytes, 10)
		}
	case s.recErr != nil:
		if md == nil {
			md = map[string]string{}
		}
		md[proto.MetaRecordingStatus] = proto.RecordingFailed
	}
	return md
}
