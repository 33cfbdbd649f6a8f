package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/clustral/clustral/proto"
)

// The proxy reports one audit event per request to ProxyConfig.Audit: RQ001I
// or RQ002W for a request the apiserver answered (by its status), DN001W
// with the error code for one the proxy refused, and for an upgraded
// exec, attach or port-forward stream RQ003I when it starts and RQ004I
// when it ends, with the same correlation id. Every response carries its
// correlation id in X-Clustral-Request-Id. Every event carries the trace
// id the request went to the apiserver with (see requestTrace).

// correlation ids: a random per-process prefix and a counter; unique
// without a random read per request.
var (
	corrPrefix = func() string {
		var b [6]byte
		rand.Read(b[:])
		return hex.EncodeToString(b[:])
	}()
	corrSeq atomic.Uint64
)

func newCorrelation() string {
	return corrPrefix + "-" + strconv.FormatUint(corrSeq.Add(1), 36)
}

func auditResource(info requestInfo) *proto.AuditResource {
	r := &proto.AuditResource{Verb: info.Verb, Path: info.Path}
	if info.IsResourceRequest {
		r.APIGroup, r.Resource, r.Subresource, r.Namespace, r.Name = info.APIGroup, info.Resource, info.Subresource, info.Namespace, info.Name
	}
	return r
}

func loginOf(peer proto.Peer) string {
	if peer.Identity != nil {
		return peer.Identity.Login
	}
	if !peer.Key.IsZero() {
		return "peer:" + peer.Key.String()
	}
	return "unknown"
}

// auditRequest reports the event of a request that has finished.
func (p *Proxy) auditRequest(r *http.Request, info requestInfo, start time.Time, sw *statusWriter, peer proto.Peer, imp impersonation, code proto.ErrorCode, s *stream) {
	if p.audit == nil {
		return
	}
	status := sw.status
	e := proto.AuditEvent{
		Code: proto.AuditRequest, Time: start.UTC(), Actor: loginOf(peer), Cluster: p.cluster,
		Resource: auditResource(info), Outcome: proto.OutcomeSuccess, Status: status, Bytes: sw.n,
		Latency: proto.Duration(time.Since(start)), Correlation: sw.corr, TraceID: sw.trace.TraceID().String(),
	}
	if imp.user != "" && imp.user != e.Actor {
		e.Metadata = map[string]string{"kube_user": imp.user}
	}
	if peer.Identity == nil && r.RemoteAddr != "" {
		e.Metadata = map[string]string{"remote": r.RemoteAddr}
	}
	switch {
	case code != "":
		e.Code, e.Outcome, e.Error = proto.AuditProxyDenied, proto.OutcomeDenied, code
	case s != nil && s.upgraded.Load():
		e.Code, e.Status = proto.AuditStreamEnded, http.StatusSwitchingProtocols
		var d *denial
		if errors.As(context.Cause(s.ctx), &d) {
			e.Error = d.code
		}
		e.Metadata = recordingMetadata(e.Metadata, s)
	case status == 0 || status >= 400:
		e.Code, e.Outcome = proto.AuditRequestFailed, proto.OutcomeFailure
		if status >= 500 && sw.Header().Get(proto.HeaderErrorCode) != "" {
			e.Error = proto.ErrorCode(sw.Header().Get(proto.HeaderErrorCode))
		}
	}
	p.audit(e)
}

// streamStarted logs and reports the start of an upgraded stream.
func (p *Proxy) streamStarted(res *http.Response) {
	if res.StatusCode != http.StatusSwitchingProtocols {
		return
	}
	s := streamFrom(res.Request.Context())
	if s == nil {
		return
	}
	attrs := []slog.Attr{
		slog.String("cluster", p.cluster),
		slog.String("user", s.login),
		slog.String("verb", s.info.Verb),
		slog.String("path", s.info.Path),
		slog.String("protocol", res.Header.Get("Upgrade")),
	}
	p.log.LogAttrs(s.ctx, slog.LevelInfo, "stream started", appendRequestIDs(attrs, s.corr, s.trace)...)
	if p.audit == nil {
		return
	}
	md := map[string]string{"protocol": res.Header.Get("Upgrade")}
	if s.rec != nil {
		md[proto.MetaRecording] = s.rec.ID()
	}
	if s.imp.user != s.login {
		md["kube_user"] = s.imp.user
	}
	p.audit(proto.AuditEvent{
		Code: proto.AuditStreamStarted, Time: time.Now().UTC(), Actor: s.login, Cluster: p.cluster,
		Resource: auditResource(s.info), Outcome: proto.OutcomeSuccess, Status: res.StatusCode,
		Correlation: s.corr, TraceID: s.trace.TraceID().String(), Metadata: md,
	})
}
