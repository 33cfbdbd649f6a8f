// Package requestinfo checks the agent's reading of requests against a
// real kube-apiserver: for a corpus of request targets (encoded segments,
// dot segments, double slashes, every subresource of the core kinds, a
// custom resource, non-resource URLs, upgrades), the verb, API group,
// resource, subresource, namespace and name the agent judges a request
// by must be what the apiserver's audit log records for the same request,
// or a role with limits must refuse the request.
package requestinfo

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clustral/clustral/agent"
	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// auditPolicy records every request once it is answered (or, for a
// long-running one, once its headers are sent), with its request info.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
`

// widest is the widest role with limits: it names every resource,
// subresource, verb, group and non-resource URL there is. What it still
// refuses, it refuses because the agent cannot be sure how the apiserver
// reads the request.
var widest = proto.Restrictions{
	APIGroups:       []string{"*"},
	Resources:       []string{"*", "*/exec", "*/attach", "*/portforward", "*/proxy", "*/ephemeralcontainers", "serviceaccounts/token"},
	Verbs:           []string{"*"},
	NonResourceURLs: []string{"*"},
}

// request is one entry of the corpus: a raw request target, sent as is.
type request struct {
	method, target string
	upgrade        bool // Connection: Upgrade, Upgrade: websocket
}

func corpus() []request {
	var rs []request
	add := func(method string, targets ...string) {
		for _, t := range targets {
			rs = append(rs, request{method: method, target: t})
		}
	}
	ns := "/api/v1/namespaces/default"
	// Every subresource of the core kinds, and their collections.
	add("GET", ns+"/pods", ns+"/pods/p", ns+"/pods/p/status", ns+"/pods/p/log", ns+"/pods/p/exec?command=sh",
		ns+"/pods/p/attach", ns+"/pods/p/portforward", ns+"/pods/p/proxy", ns+"/pods/p/proxy/metrics/x",
		ns+"/pods/p/ephemeralcontainers", ns+"/pods/p/resize",
		ns+"/services/s", ns+"/services/s/status", ns+"/services/s:http/proxy/admin", ns+"/serviceaccounts/sa",
		ns+"/replicationcontrollers/rc/scale", ns+"/persistentvolumeclaims/c/status", ns+"/resourcequotas/q/status",
		ns+"/secrets/s", ns+"/configmaps", ns+"/events",
		"/api/v1/nodes", "/api/v1/nodes/n1", "/api/v1/nodes/n1/status", "/api/v1/nodes/n1/proxy",
		"/api/v1/nodes/n1/proxy/exec/default/p/c?command=sh", "/api/v1/nodes/n1:10250/proxy/pods",
		"/api/v1/namespaces", "/api/v1/namespaces/default", "/api/v1/namespaces/default/status",
		"/api/v1/persistentvolumes/v/status", "/api/v1/pods", "/api/v1/componentstatuses/etcd-0",
		"/apis/apps/v1/namespaces/default/deployments/d/scale", "/apis/apps/v1/namespaces/default/statefulsets/s/status",
		"/apis/rbac.authorization.k8s.io/v1/clusterroles/admin", "/apis/certificates.k8s.io/v1/certificatesigningrequests/c/approval",
	)
	add("POST", ns+"/pods/p/exec?command=sh", ns+"/pods/p/attach", ns+"/pods/p/portforward", ns+"/pods/p/eviction",
		ns+"/pods/p/binding", ns+"/serviceaccounts/sa/token", ns+"/pods", "/api/v1/namespaces",
		"/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
	add("PATCH", ns+"/pods/p/ephemeralcontainers", ns+"/pods/p/status", "/apis/apps/v1/namespaces/default/deployments/d/scale")
	add("PUT", "/api/v1/namespaces/default/finalize", ns+"/pods/p/resize")
	add("DELETE", ns+"/pods/p", ns+"/pods", "/api/v1/nodes/n1")
	add("HEAD", ns+"/pods", ns+"/pods/p")
	// Watches and name selectors.
	add("GET", ns+"/pods?watch=true", ns+"/pods?watch=1&fieldSelector=metadata.name%3Dp", ns+"/pods?fieldSelector=metadata.name%3Dp",
		"/api/v1/watch/namespaces/default/pods", "/api/v1/watch/namespaces/default/pods/p", "/api/v1/watch/pods",
		"/apis/apps/v1/watch/namespaces/default/deployments", "/api/v1/watch")
	// A custom resource, namespaced and cluster-scoped, with subresources.
	add("GET", "/apis/example.com/v1/namespaces/default/widgets", "/apis/example.com/v1/namespaces/default/widgets/w",
		"/apis/example.com/v1/namespaces/default/widgets/w/status", "/apis/example.com/v1/namespaces/default/widgets/w/scale",
		"/apis/example.com/v1/namespaces/default/widgets/w/exec", "/apis/example.com/v1/gadgets/g", "/apis/example.com/v1/gadgets/g/proxy")
	// Encoded segments.
	add("GET", "/api/v1/namespaces/def%61ult/pods", ns+"/pods/a%2Fb", ns+"/pods/a%2fb/exec", ns+"/pods/%2e%2e/secrets",
		ns+"/pods/p/%2E%2E/%2E%2E/secrets/s", "/api%2Fv1/namespaces/default/pods", ns+"/pods/a%20b", ns+"/pods/x%3Fwatch=true",
		"/api/v1/namespaces/kube%2Dsystem/secrets", "/%61pi/v1/namespaces/default/secrets")
	// Dot segments, double and trailing slashes.
	add("GET", ns+"/pods/../../kube-system/secrets", ns+"/./pods", ns+"/pods/p/../q", ns+"/pods/p/./exec", "/api/v1/namespaces/..",
		"//api/v1/namespaces/default/pods", "/api//v1/namespaces/default/pods", "/api/v1/namespaces//pods", ns+"//pods",
		ns+"/pods//p", ns+"/pods/p//exec", ns+"/pods/", ns+"/pods/p/", "/apis/apps/v1//deployments")
	// The legacy proxy verb prefix.
	add("GET", "/api/v1/proxy/namespaces/default/pods/p", "/api/v1/proxy/nodes/n1/pods")
	// Non-resource URLs, discovery among them.
	add("GET", "/", "/api", "/api/v1", "/api/", "/apis", "/apis/apps", "/apis/apps/v1", "/apis/apps/v1/", "/version", "/version/",
		"/openapi/v2", "/openapi/v3", "/openapi/v3/apis/apps/v1", "/healthz", "/livez", "/readyz", "/metrics",
		"/logs/", "/logs/kube-apiserver.log", "/debug/pprof/", "//metrics", "/metrics/../logs/", "/api/../logs/", "/.well-known/openid-configuration")
	add("POST", "/version", "/api")
	// Upgrades.
	for _, t := range []string{ns + "/pods/p/exec?command=sh", ns + "/pods/p/attach", ns + "/pods/p/portforward", ns + "/pods/p/proxy/ws",
		ns + "/services/s/proxy/ws", "/api/v1/nodes/n1/proxy/exec/default/p/c?command=sh", ns + "/pods/p/log?follow=true",
		ns + "/pods?watch=true", "/version", ns + "/pods/p/../q/exec"} {
		rs = append(rs, request{method: "GET", target: t, upgrade: true})
	}
	rs = append(rs, request{method: "POST", target: ns + "/pods/p/exec?command=sh", upgrade: true})
	return rs
}

// TestAgentReadsRequestsAsTheAPIServer sends each request of the corpus
// through a real agent proxy to a real kube-apiserver, once for a device
// whose role has no limits (so the agent forwards all it can), and
// compares the request info the agent recorded with the one the
// apiserver's audit log recorded under the agent's correlation id (the
// agent's Audit-ID; the one each request is sent with must be replaced,
// and is checked to be absent from the apiserver's log). Every request
// where the two differ, or that the apiserver never saw, is sent again
// for a device whose role has the widest limits there are, and the agent
// must refuse it.
func TestAgentReadsRequestsAsTheAPIServer(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	etcd, err := harness.StartEtcd(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { etcd.Close() })
	policy, auditLog := filepath.Join(dir, "audit-policy.yaml"), filepath.Join(dir, "audit.log")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	api, err := harness.StartAPIServer(ctx, dir, etcd.URL, harness.APIServerOptions{ExtraArgs: []string{
		"--audit-policy-file=" + policy, "--audit-log-path=" + auditLog, "--audit-log-format=json", "--audit-log-mode=blocking",
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { api.Close() })

	var peers fixedPeers
	peers.set(nil)
	var (
		mu     sync.Mutex
		agentR = map[string]*proto.AuditResource{} // by correlation id
	)
	p, err := agent.NewProxy(agent.ProxyConfig{
		Cluster:   "diff",
		Upstream:  api.Config(),
		Peers:     &peers,
		RateLimit: -1,
		Logger:    slog.New(slog.DiscardHandler),
		Audit: func(e proto.AuditEvent) {
			if e.Code == proto.AuditStreamStarted {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			agentR[e.Correlation] = e.Resource
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(l)

	reqs := corpus()
	type sent struct {
		req      request
		auditID  string
		corr     string // the agent's request id; "" if the agent never handled it
		refusal  proto.ErrorCode
		status   int
		agentRes *proto.AuditResource
	}
	results := make([]sent, len(reqs))
	for i, r := range reqs {
		s := sent{req: r, auditID: fmt.Sprintf("clustral-diff-%03d", i)}
		resp, _ := send(t, l.Addr().String(), r, s.auditID)
		s.corr, s.refusal, s.status = resp.Header.Get(proto.HeaderRequestID), proto.ErrorCode(resp.Header.Get(proto.HeaderErrorCode)), resp.StatusCode
		results[i] = s
	}
	// The apiserver audits a request before it answers it, unless it
	// cannot read the request at all (then it answers 500 unaudited). A
	// last request marks the end of the log; the agent records each
	// request when it ends.
	last, _ := send(t, l.Addr().String(), request{method: "GET", target: "/version"}, "clustral-diff-sentinel")
	sentinel := last.Header.Get(proto.HeaderRequestID)
	var audited map[string]apiEvent
	harness.MustEventually(t, 30*time.Second, func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		for i, s := range results {
			if s.corr == "" {
				continue
			}
			res, ok := agentR[s.corr]
			if !ok {
				return fmt.Errorf("no agent audit event for %s %s", s.req.method, s.req.target)
			}
			results[i].agentRes = res
		}
		var err error
		if audited, err = readAudit(auditLog); err != nil {
			return err
		}
		if _, ok := audited[sentinel]; !ok {
			return errors.New("the last request is not in the apiserver's audit log yet")
		}
		return nil
	})

	var mustRefuse []int
	agreed := 0
	for i, s := range results {
		if _, ok := audited[s.auditID]; ok {
			t.Errorf("%s %s: the apiserver audited it under the Audit-ID the client sent", s.req.method, s.req.target)
		}
		ev, seen := audited[s.corr]
		seen = seen && s.corr != ""
		var why string
		switch {
		case s.corr == "":
			why = fmt.Sprintf("the agent's HTTP server answered %d before the proxy saw it", s.status)
		case !seen && s.refusal != "":
			// The agent refused it although the role has no limits: a
			// refused upgrade. The widest limits must refuse it too.
			why = "refused by the agent without limits (" + string(s.refusal) + ")"
		case !seen:
			why = "the apiserver did not audit it"
		default:
			var note string
			why, note = differ(s.req, s.agentRes, ev)
			if note != "" {
				t.Logf("%s %s (upgrade %v): %s", s.req.method, s.req.target, s.req.upgrade, note)
			}
		}
		if why == "" {
			agreed++
			continue
		}
		t.Logf("%s %s (upgrade %v): %s", s.req.method, s.req.target, s.req.upgrade, why)
		mustRefuse = append(mustRefuse, i)
	}
	t.Logf("%d of %d requests read alike by the agent and the apiserver; %d differ or did not reach it", agreed, len(results), len(mustRefuse))
	if agreed < len(results)/2 {
		t.Errorf("only %d of %d requests agree: the comparison itself is broken", agreed, len(results))
	}

	// Under the widest limits, every request that differed is refused,
	// and every one that agreed is forwarded unless the agent cannot
	// judge its path.
	peers.set(&widest)
	for i, s := range results {
		resp, body := send(t, l.Addr().String(), s.req, fmt.Sprintf("clustral-diff-widest-%03d", i))
		code := proto.ErrorCode(resp.Header.Get(proto.HeaderErrorCode))
		refused := code == proto.CodeResourceNotAllowed || code == proto.CodeBadUpgrade ||
			resp.Header.Get(proto.HeaderRequestID) == "" && resp.StatusCode == http.StatusBadRequest
		if slices.Contains(mustRefuse, i) {
			if !refused {
				t.Errorf("%s %s (upgrade %v): the agent reads it differently from the apiserver, yet a role with limits lets it through (status %d, code %q)",
					s.req.method, s.req.target, s.req.upgrade, resp.StatusCode, code)
			}
			continue
		}
		if refused && !strings.Contains(body, "cannot judge the path") {
			t.Errorf("%s %s: the agent and the apiserver agree, yet the widest limits refuse it: %d %s %s", s.req.method, s.req.target, resp.StatusCode, code, body)
		}
	}

	// The bypasses a role with limits once allowed, against the real
	// apiserver: refused by the agent, or, where the role names what they
	// ask for, forwarded (the apiserver's RBAC then refuses alice, who has
	// no binding: a 403 without a clustral code).
	reader := proto.Restrictions{Verbs: []string{"get", "list", "watch"}, Resources: []string{"*"}}
	inDefault := proto.Restrictions{Namespaces: []string{"default"}}
	named := proto.Restrictions{Verbs: []string{"get"}, Resources: []string{"nodes/proxy"}, NonResourceURLs: []string{"/metrics"}}
	for _, tt := range []struct {
		name string
		rs   *proto.Restrictions
		req  request
		code proto.ErrorCode // "" means forwarded
	}{
		{"kubelet exec through nodes/proxy", &reader, request{"GET", "/api/v1/nodes/n1/proxy/exec/default/p/c?command=sh", true}, proto.CodeResourceNotAllowed},
		{"nodes/proxy without upgrade", &reader, request{"GET", "/api/v1/nodes/n1/proxy/pods", false}, proto.CodeResourceNotAllowed},
		{"websocket exec as get", &reader, request{"GET", "/api/v1/namespaces/default/pods/p/exec?command=sh", true}, proto.CodeVerbNotAllowed},
		{"logs of the apiserver", &inDefault, request{"GET", "/logs/", false}, proto.CodeResourceNotAllowed},
		{"profiling", &inDefault, request{"GET", "/debug/pprof/profile", false}, proto.CodeResourceNotAllowed},
		{"metrics", &inDefault, request{"GET", "/metrics", false}, proto.CodeResourceNotAllowed},
		{"exec in the namespace", &inDefault, request{"POST", "/api/v1/namespaces/default/pods/p/exec?command=sh", true}, proto.CodeResourceNotAllowed},
		{"upgrade on a watch", nil, request{"GET", "/api/v1/namespaces/default/pods?watch=true", true}, proto.CodeBadUpgrade},
		{"discovery", &inDefault, request{"GET", "/apis", false}, ""},
		{"named nodes/proxy", &named, request{"GET", "/api/v1/nodes/n1/proxy/exec/default/p/c?command=sh", true}, ""},
		{"named non-resource URL", &named, request{"GET", "/metrics", false}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			peers.set(tt.rs)
			resp, body := send(t, l.Addr().String(), tt.req, "clustral-diff-"+strings.ReplaceAll(tt.name, " ", "-"))
			if code := proto.ErrorCode(resp.Header.Get(proto.HeaderErrorCode)); code != tt.code {
				t.Errorf("%s %s: %d %q %s, want code %q", tt.req.method, tt.req.target, resp.StatusCode, code, body, tt.code)
			}
		})
	}
}

// differ says how the agent's reading r of req differs from the
// apiserver's audit event ev, or "" if it does not; note remarks on an
// expected difference.
func differ(req request, r *proto.AuditResource, ev apiEvent) (why, note string) {
	if r == nil {
		return "the agent recorded no request info", ""
	}
	var o objectRef
	if ev.ObjectRef != nil {
		o = *ev.ObjectRef
	}
	agentSays := fmt.Sprintf("verb=%s group=%s resource=%s sub=%s ns=%s name=%s", r.Verb, r.APIGroup, r.Resource, r.Subresource, r.Namespace, r.Name)
	apiSays := fmt.Sprintf("verb=%s group=%s resource=%s sub=%s ns=%s name=%s", ev.Verb, o.APIGroup, o.Resource, o.Subresource, o.Namespace, o.Name)
	if agentSays == apiSays {
		if ev.ObjectRef == nil && r.Path != pathOf(ev.RequestURI) {
			return fmt.Sprintf("non-resource path: agent %q, apiserver %q", r.Path, pathOf(ev.RequestURI)), ""
		}
		return "", ""
	}
	// A websocket GET to exec, attach or portforward is judged as create
	// by the agent, as the apiserver's pod handlers authorize it a second
	// time; the audit log shows the first, get. The agent is stricter.
	if req.upgrade && r.Verb == "create" && ev.Verb == "get" && r.Resource == "pods" &&
		slices.Contains([]string{"exec", "attach", "portforward"}, r.Subresource) &&
		strings.Replace(agentSays, "verb=create", "verb=get", 1) == apiSays {
		return "", "the agent judges create where the audit log shows get (the pod handler authorizes create itself)"
	}
	return "agent " + agentSays + "; apiserver " + apiSays, ""
}

// pathOf is the decoded path of a request URI, as both sides record it.
func pathOf(uri string) string {
	u, err := url.ParseRequestURI(uri)
	if err != nil {
		p, _, _ := strings.Cut(uri, "?")
		return p
	}
	return u.Path
}

// send writes r to the agent at addr as a raw HTTP/1.1 request with the
// given Audit-ID, reads the response and up to 64 KiB of its body, and
// closes the connection.
func send(t *testing.T, addr string, r request, auditID string) (*http.Response, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	extra := ""
	if r.upgrade {
		extra = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	}
	if r.method == "POST" || r.method == "PUT" || r.method == "PATCH" {
		extra += "Content-Type: application/json\r\nContent-Length: 2\r\n"
	}
	reqBody := ""
	if strings.Contains(extra, "Content-Length") {
		reqBody = "{}"
	}
	if _, err := fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: diff.clustral.internal\r\nAudit-ID: %s\r\n%s\r\n%s", r.method, r.target, auditID, extra, reqBody); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: r.method})
	if err != nil {
		t.Fatalf("%s %s: %v", r.method, r.target, err)
	}
	var body []byte
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ = io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	}
	return resp, string(body)
}

// fixedPeers maps every loopback address to one device of alice, whose
// one role has the restrictions last set.
type fixedPeers struct {
	rs atomic.Pointer[proto.Restrictions]
}

func (f *fixedPeers) set(rs *proto.Restrictions) { f.rs.Store(rs) }

func (f *fixedPeers) PeerByAddr(a netip.Addr) (proto.Peer, bool) {
	if !a.IsLoopback() {
		return proto.Peer{}, false
	}
	return proto.Peer{
		Key:  proto.Key{1},
		Kind: proto.KindDevice,
		Identity: &proto.Identity{
			UserID: "u-alice",
			Login:  "alice@example.com",
			Roles:  []proto.RoleGrant{{Role: "r", Groups: []string{"clustral:diff"}, Restrictions: f.rs.Load()}},
		},
	}, true
}

// apiEvent is the part of a kube-apiserver audit event compared here.
type apiEvent struct {
	AuditID    string     `json:"auditID"`
	Stage      string     `json:"stage"`
	RequestURI string     `json:"requestURI"`
	Verb       string     `json:"verb"`
	ObjectRef  *objectRef `json:"objectRef"`
}

type objectRef struct {
	Resource    string `json:"resource"`
	Namespace   string `json:"namespace"`
	Name        string `json:"name"`
	APIGroup    string `json:"apiGroup"`
	Subresource string `json:"subresource"`
}

// readAudit reads the audit log at path, keeping the first event of
// each audit id.
func readAudit(path string) (map[string]apiEvent, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no audit log yet at %s", path)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]apiEvent{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		var ev apiEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			// The last line may still be being written.
			continue
		}
		if _, ok := out[ev.AuditID]; !ok {
			out[ev.AuditID] = ev
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read audit log %s: %w", path, err)
	}
	return out, nil
}
