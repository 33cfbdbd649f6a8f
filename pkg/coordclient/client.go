// Package coordclient is the one client of the coordinator's HTTP API:
// the CLI's commands, the device runtime, the agent and a node's map
// stream and relay all reach the coordinator through it.
//
// A Client is one caller: a base URL, a bearer token (a session, a join
// token or a node token; empty for the public calls) and the *http.Client
// that carries the requests. The base URL may name several coordinator
// replicas, comma-separated: the Client sends to one, and moves to the
// next when it cannot reach it (see Client.send). Every request it makes sends the token as
// "Authorization: Bearer"; every error answer becomes an *Error carrying
// the coordinator's problem document; a coordinator that cannot be
// reached gives an error matching ErrUnreachable. Backoff and Retry are
// the one policy by which callers wait before they try again.
//
// A Client is immutable and safe for concurrent use; WithToken returns a
// copy for another credential.
package coordclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/clustral/clustral/proto"
)

// maxProblemBytes bounds how much of an error answer is read.
const maxProblemBytes = 64 << 10

// ErrUnreachable matches (errors.Is) the error of a request that got no
// answer from the coordinator: a refused connection, a TLS failure, a
// timeout. Its text reads "reach coordinator <URL>: <cause>".
var ErrUnreachable = errors.New("reach coordinator")

// Error is an error answer of the coordinator: its problem document, with
// Status set to the HTTP status code. Its Error reads "Title: Detail" (or
// the title alone); it unwraps to the *proto.Problem, so errors.As finds
// either.
type Error struct {
	proto.Problem
}

func (e *Error) Error() string {
	if e.Detail != "" {
		return e.Title + ": " + e.Detail
	}
	return e.Title
}

// Unwrap returns the problem document.
func (e *Error) Unwrap() error { return &e.Problem }

// IsRefused reports whether err is the coordinator refusing the caller's
// credential (401 or 403): trying again with it cannot help.
func IsRefused(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden)
}

// Client makes requests to the coordinator as one caller. Create it with
// New.
type Client struct {
	bases []string // without trailing slashes; at least one
	token string
	hc    *http.Client
	// at is the replica in use: the index in bases of the one that
	// answered last, and the name it answered with. Copies made by
	// WithToken share it.
	at *replicaInUse
}

// replicaInUse is where a Client and its copies send their requests.
type replicaInUse struct {
	idx  atomic.Int32
	name atomic.Pointer[string]
}

// New returns a client of the coordinator at baseURL (such as
// "https://coord.example") that authenticates with token, if not empty,
// and sends its requests with hc (nil means http.DefaultClient). baseURL
// is taken as given, a trailing slash dropped; several replicas'
// URLs, comma-separated, are tried in turn (see send).
func New(baseURL, token string, hc *http.Client) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	c := &Client{token: token, hc: hc, at: &replicaInUse{}}
	for _, b := range SplitURLs(baseURL) {
		c.bases = append(c.bases, strings.TrimRight(b, "/"))
	}
	if len(c.bases) == 0 {
		c.bases = []string{""}
	}
	return c
}

// SplitURLs returns the URLs of a comma-separated list, spaces trimmed,
// empty elements left out.
func SplitURLs(list string) []string {
	var out []string
	for _, u := range strings.Split(list, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// BadURLError names a coordinator URL that is not an http(s) URL.
type BadURLError struct{ URL string }

func (e *BadURLError) Error() string {
	return fmt.Sprintf("coordinator URL %q is not an http(s) URL", e.URL)
}

// CheckURLs checks that list names at least one coordinator URL and
// that each is an http(s) URL with a host; the error is a *BadURLError.
func CheckURLs(list string) error {
	urls := SplitURLs(list)
	if len(urls) == 0 {
		return &BadURLError{URL: list}
	}
	for _, s := range urls {
		if u, err := url.Parse(s); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return &BadURLError{URL: s}
		}
	}
	return nil
}

// WithToken returns a copy of c that authenticates with token.
func (c *Client) WithToken(token string) *Client {
	cp := *c
	cp.token = token
	return &cp
}

// BaseURL returns the URL of the coordinator replica in use (the one
// that answered last), without a trailing slash.
func (c *Client) BaseURL() string { return c.bases[c.at.idx.Load()] }

// URLs returns every replica's URL, comma-separated, the one in use
// first: what New takes for another client of the same replicas.
func (c *Client) URLs() string {
	i := int(c.at.idx.Load())
	return strings.Join(append(append([]string(nil), c.bases[i:]...), c.bases[:i]...), ",")
}

// Replica returns the name the replica in use answered with last, or ""
// when it named none (a coordinator that does not share its store).
func (c *Client) Replica() string {
	if n := c.at.name.Load(); n != nil {
		return *n
	}
	return ""
}

// Token returns the bearer credential c sends.
func (c *Client) Token() string { return c.token }

// HTTPClient returns the *http.Client that carries c's requests.
func (c *Client) HTTPClient() *http.Client { return c.hc }

// newRequest builds a request for path (which starts with "/") with the
// bearer token and, if body is not nil, a JSON body.
func (c *Client) newRequest(ctx context.Context, method, path string, body any) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL()+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// send sends req and returns its answer, or an ErrUnreachable error.
// With several replicas, a request that got no answer from the replica
// in use is sent to the next one, and so on once around: any request
// whose connection could not be opened (it never left), and a GET
// whatever failed. The replica that answers is the one in use from then
// on.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	start := int(c.at.idx.Load())
	from := c.bases[start]
	var errs []error
	for i := range c.bases {
		idx := (start + i) % len(c.bases)
		r := req
		if i > 0 {
			var err error
			if r, err = retarget(req, from, c.bases[idx]); err != nil {
				return nil, err
			}
		}
		resp, err := c.hc.Do(r)
		if err == nil {
			c.at.idx.Store(int32(idx))
			name := resp.Header.Get(proto.HeaderReplica)
			c.at.name.Store(&name)
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", c.bases[idx], err))
		if req.Context().Err() != nil || !(req.Method == http.MethodGet || neverSent(err)) {
			break
		}
	}
	if len(errs) == 1 {
		return nil, fmt.Errorf("%w %w", ErrUnreachable, errs[0])
	}
	return nil, fmt.Errorf("%w: none of %d replicas answered: %w", ErrUnreachable, len(c.bases), errors.Join(errs...))
}

// retarget returns req sent to base to instead of base from, with a fresh
// copy of its body.
func retarget(req *http.Request, from, to string) (*http.Request, error) {
	u, err := url.Parse(to + strings.TrimPrefix(req.URL.String(), from))
	if err != nil {
		return nil, fmt.Errorf("coordinator URL %q: %w", to, err)
	}
	r := req.Clone(req.Context())
	r.URL, r.Host = u, ""
	if req.GetBody != nil {
		if r.Body, err = req.GetBody(); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// neverSent reports whether err says the request's connection could not
// be opened, so the coordinator never saw it and another replica may
// take it without doing it twice.
func neverSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// Do sends one request to path (such as proto.APIVersion+"/whoami") with
// body, if not nil, as JSON, and decodes a JSON answer into out, if not
// nil. An answer other than 2xx, and 202 (the coordinator's "not yet"),
// is an *Error.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	req, err := c.newRequest(ctx, method, path, body)
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 || resp.StatusCode == http.StatusAccepted {
		return readError(resp)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode coordinator answer to %s %s: %w", method, path, err)
	}
	return nil
}

// call is Do for a call that answers a T.
func call[T any](ctx context.Context, c *Client, method, path string, body any) (T, error) {
	var out T
	err := c.Do(ctx, method, path, body, &out)
	return out, err
}

// Open sends a GET for path with the extra header hdr (may be nil) and
// returns the body of a 200 answer for the caller to stream and close.
// Any other answer is an *Error.
func (c *Client) Open(ctx context.Context, path string, hdr http.Header) (io.ReadCloser, error) {
	req, err := c.newRequest(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	return resp.Body, nil
}

// readError reads an error answer into an *Error. A body that is not a
// problem document becomes the title, after the status.
func readError(resp *http.Response) *Error {
	e := &Error{}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxProblemBytes))
	if json.Unmarshal(b, &e.Problem) != nil || e.Title == "" {
		e.Problem = proto.Problem{Title: fmt.Sprintf("coordinator answered %s: %s", resp.Status, strings.TrimSpace(string(b)))}
	}
	e.Status = resp.StatusCode
	return e
}

// ---- Login (public calls: a Client without a token) ----

// Info returns the coordinator's public description (GET /api/v1/info)
// into out.
func (c *Client) Info(ctx context.Context, out any) error {
	return c.Do(ctx, http.MethodGet, proto.APIVersion+"/info", nil, out)
}

// LoginStart starts a login (POST /api/v1/login/start).
func (c *Client) LoginStart(ctx context.Context, req proto.LoginStartRequest) (proto.LoginStartResponse, error) {
	return call[proto.LoginStartResponse](ctx, c, http.MethodPost, proto.APIVersion+"/login/start", req)
}

// LoginPoll asks whether the login is complete (POST /api/v1/login/poll).
// While it is not, the error is an *Error with Code proto.CodeLoginPending.
func (c *Client) LoginPoll(ctx context.Context, req proto.LoginPollRequest) (proto.Session, error) {
	return call[proto.Session](ctx, c, http.MethodPost, proto.APIVersion+"/login/poll", req)
}

// LoginExchange exchanges the one-time code of a loopback redirect for a
// session (POST /api/v1/login/exchange).
func (c *Client) LoginExchange(ctx context.Context, req proto.LoginExchangeRequest) (proto.Session, error) {
	return call[proto.Session](ctx, c, http.MethodPost, proto.APIVersion+"/login/exchange", req)
}

// LoginToken exchanges an ID token for a session (POST
// /api/v1/login/token).
func (c *Client) LoginToken(ctx context.Context, req proto.TokenExchangeRequest) (proto.Session, error) {
	return call[proto.Session](ctx, c, http.MethodPost, proto.APIVersion+"/login/token", req)
}

// Logout ends c's session (DELETE /api/v1/session).
func (c *Client) Logout(ctx context.Context) error {
	return c.Do(ctx, http.MethodDelete, proto.APIVersion+"/session", nil, nil)
}

// Whoami returns who c's session is (GET /api/v1/whoami).
func (c *Client) Whoami(ctx context.Context) (proto.Whoami, error) {
	return call[proto.Whoami](ctx, c, http.MethodGet, proto.APIVersion+"/whoami", nil)
}

// ---- Registration (a session or a join token; then the node token) ----

// RegisterDevice registers a device's key under c's session (POST
// /api/v1/devices).
func (c *Client) RegisterDevice(ctx context.Context, req proto.RegisterDeviceRequest) (proto.RegisterResponse, error) {
	return call[proto.RegisterResponse](ctx, c, http.MethodPost, proto.APIVersion+"/devices", req)
}

// RegisterAgent registers an agent with c's join token (POST
// /api/v1/agents).
func (c *Client) RegisterAgent(ctx context.Context, req proto.RegisterAgentRequest) (proto.RegisterResponse, error) {
	return call[proto.RegisterResponse](ctx, c, http.MethodPost, proto.APIVersion+"/agents", req)
}

// Deregister removes the node whose node token c holds (DELETE
// /api/v1/nodes/self).
func (c *Client) Deregister(ctx context.Context) error {
	return c.Do(ctx, http.MethodDelete, proto.APIVersion+"/nodes/self", nil, nil)
}

// ---- A node's calls (the node token) ----

// PublishEndpoints publishes the node's UDP endpoints (PUT
// /api/v1/nodes/self/endpoints).
func (c *Client) PublishEndpoints(ctx context.Context, eps []netip.AddrPort) error {
	return c.Do(ctx, http.MethodPut, proto.APIVersion+"/nodes/self/endpoints", proto.EndpointsUpdate{Endpoints: eps}, nil)
}

// ReportStatus sends an agent's status and live sessions (PUT
// proto.AgentStatusPath).
func (c *Client) ReportStatus(ctx context.Context, st proto.AgentStatus) error {
	return c.Do(ctx, http.MethodPut, proto.AgentStatusPath, st, nil)
}

// LiveSessions lists the live sessions of every agent (GET
// proto.LiveSessionsPath, administrators).
func (c *Client) LiveSessions(ctx context.Context) (proto.LiveSessions, error) {
	return call[proto.LiveSessions](ctx, c, http.MethodGet, proto.LiveSessionsPath, nil)
}

// EndLiveSession ends the live session id (POST
// proto.LiveSessionsPath/{id}/end, administrators).
func (c *Client) EndLiveSession(ctx context.Context, id string) (proto.EndLiveSession, error) {
	return call[proto.EndLiveSession](ctx, c, http.MethodPost, proto.LiveSessionsPath+"/"+url.PathEscape(id)+"/end", nil)
}

// ShipAudit sends a batch of audit events (POST /api/v1/audit/events).
func (c *Client) ShipAudit(ctx context.Context, b proto.AuditBatch) (proto.AuditAck, error) {
	return call[proto.AuditAck](ctx, c, http.MethodPost, proto.APIVersion+"/audit/events", b)
}

// PutRecording ships one session recording, read from body
// (PUT /api/v1/recordings/{id}), and returns what the coordinator stored.
// Like every call that changes something, it moves on to the next
// coordinator only when the last could not be reached at all, so body
// is still unread then.
func (c *Client) PutRecording(ctx context.Context, id string, body io.Reader) (proto.RecordingInfo, error) {
	return sendRecording[proto.RecordingInfo](ctx, c, http.MethodPut, proto.APIVersion+"/recordings/"+url.PathEscape(id), id, body)
}

// sendRecording sends body, bytes of recording id, with method to path,
// and decodes the answer.
func sendRecording[T any](ctx context.Context, c *Client, method, path, id string, body io.Reader) (T, error) {
	var out T
	req, err := c.newRequest(ctx, method, path, nil)
	if err != nil {
		return out, err
	}
	req.Body = io.NopCloser(body)
	req.Header.Set("Content-Type", "application/x-asciicast")
	resp, err := c.send(req)
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return out, readError(resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return out, fmt.Errorf("decode coordinator answer to recording %s: %w", id, err)
	}
	return out, nil
}

// AppendRecording ships the part of a running session's recording read
// from body, which starts at byte off of it (PATCH
// /api/v1/recordings/{id}?offset=off), and returns how many bytes of the
// recording the coordinator now holds and whether someone watches it.
func (c *Client) AppendRecording(ctx context.Context, id string, off int64, body io.Reader) (proto.RecordingAppended, error) {
	return sendRecording[proto.RecordingAppended](ctx, c, http.MethodPatch,
		proto.APIVersion+"/recordings/"+url.PathEscape(id)+"?"+proto.RecordingParamOffset+"="+strconv.FormatInt(off, 10), id, body)
}

// MapPath is the path of the map stream.
const MapPath = proto.APIVersion + "/map"

// MapStream opens the node's map stream (GET /api/v1/map), publishing eps
// (if any) as its endpoints, and returns the newline-delimited JSON body
// for the caller to read and close. ctx bounds the whole stream.
func (c *Client) MapStream(ctx context.Context, eps []netip.AddrPort) (io.ReadCloser, error) {
	path := MapPath
	if len(eps) > 0 {
		list := make([]string, len(eps))
		for i, e := range eps {
			list[i] = e.String()
		}
		path += "?" + url.Values{proto.MapEndpointsParam: {strings.Join(list, ",")}}.Encode()
	}
	return c.Open(ctx, path, http.Header{"Accept": {"application/x-ndjson"}})
}

// DialRelay opens the node's relay connection (GET proto.RelayPath,
// upgraded to proto.RelayUpgrade) and returns it for the caller to
// close. The upgrade needs HTTP/1.1: c's *http.Client must not
// negotiate HTTP/2. ctx bounds the connection.
func (c *Client) DialRelay(ctx context.Context) (io.ReadWriteCloser, error) {
	req, err := c.newRequest(ctx, http.MethodGet, proto.RelayPath, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", proto.RelayUpgrade)
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, errors.New("upgraded body is not writable")
	}
	return rwc, nil
}
