package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"

	"k8s.io/apiserver/pkg/endpoints/request"

	"github.com/clustral/clustral/agent/live"
	"github.com/clustral/clustral/proto"
)

// isLive reports whether r asks for the live view (proto.LivePrefix).
// Such a request never reaches the apiserver.
func isLive(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, proto.LivePrefix) }

// serveLive serves the live stream of the caller s, which the proxy has
// authorized and tracks like any request: a revocation, expiry or role
// change ends it as it ends a kubectl watch. Each object goes through
// liveAccess.
func (p *Proxy) serveLive(w http.ResponseWriter, r *http.Request, s *stream) {
	if p.view == nil {
		writeError(w, http.StatusNotFound, proto.CodeNotFound, "The live view is not enabled on the agent of cluster '"+p.cluster+"'. Ask an admin to run the agent with --live.")
		return
	}
	if r.URL.Path != proto.LiveStreamPath {
		writeError(w, http.StatusNotFound, proto.CodeNotFound, "No such live view path: "+r.URL.Path+". The live stream is "+proto.LiveStreamPath+".")
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		writeError(w, http.StatusMethodNotAllowed, proto.CodeBadRequest, "The live stream answers GET only.")
		return
	}
	cur, err := proto.ParseLiveCursor(r.URL.Query().Get("since"))
	if err != nil {
		writeError(w, http.StatusBadRequest, proto.CodeBadRequest, err.Error()+".")
		return
	}
	h := w.Header()
	h.Set("Content-Type", proto.LiveContentType)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	s.responded.Store(true)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		return
	}
	err = p.view.Stream(r.Context(), w, rc.Flush, cur, p.liveAccess(s.addr, s.key))
	if err != nil && !errors.Is(err, context.Canceled) && r.Context().Err() == nil {
		p.log.LogAttrs(r.Context(), slog.LevelWarn, "live stream ended", slog.String("cluster", p.cluster),
			slog.String("peer", s.key.ShortString()), slog.Any("err", err))
	}
}

// liveAccess decides whether the peer key, at addr, may see the objects
// of a kind in a namespace: whether it could list and watch them through
// the proxy now. That is the clustral restrictions of its grants
// (authorize, from the current map) and the apiserver's RBAC for the
// identity the proxy would impersonate for those requests
// (SubjectAccessReview, cached by the live Source).
func (p *Proxy) liveAccess(addr netip.Addr, key proto.Key) live.Access {
	return func(ctx context.Context, k live.Kind, namespace string) (bool, error) {
		peer, ok := p.peers.PeerByAddr(addr)
		if !ok || peer.Key != key {
			return false, nil
		}
		now := p.now()
		prefix := "apis"
		if k.GVR.Group == "" {
			prefix = "api"
		}
		for _, verb := range []string{"list", "watch"} {
			info := requestInfo{RequestInfo: &request.RequestInfo{
				IsResourceRequest: true, Verb: verb, APIPrefix: prefix,
				APIGroup: k.GVR.Group, APIVersion: k.GVR.Version, Resource: k.GVR.Resource, Namespace: namespace,
			}}
			imp, d := authorize(p.cluster, peer, info, now)
			if d != nil {
				return false, nil
			}
			ok, err := p.view.Allowed(ctx, live.Identity{User: imp.user, Groups: imp.groups}, verb, k.GVR.Group, k.GVR.Resource, namespace)
			if err != nil || !ok {
				return false, err
			}
		}
		return true, nil
	}
}
